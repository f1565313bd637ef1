"""Users' own presets and group options from a directory of their own (`--config-dir DIR`,
docs/configuration.md), composed by the real command line with `--cfg job` (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

MY_UNET = """\
# A wider, shallower U-Net than seglab's.
defaults:
  - unet_schema
  - _self_
_target_: seglab.models.unet.build
base_filters: 24
depth: 3
dropout: 0.1
batch_norm: true
bn_momentum: 0.9
"""
MINE = """\
# @package _global_
defaults:
  - override /model: my_unet
  - override /loss: dice
trainer:
  epochs: 7
data:
  image_size: 48
"""


@pytest.fixture
def user_dir(tmp_path) -> Path:
    root = tmp_path / "my_conf"
    for relative, text in {"model/my_unet.yaml": MY_UNET, "experiment/mine.yaml": MINE}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def composed(user_dir: Path, *overrides: str) -> dict:
    done = run_cli("--config-dir", str(user_dir), *overrides, "--cfg", "job", cwd=user_dir.parent)
    return yaml.safe_load(done.stdout)


def test_a_users_preset_brings_in_a_users_model_option(user_dir):
    cfg = composed(user_dir, "+experiment=mine")
    assert (cfg["model"]["base_filters"], cfg["model"]["depth"], cfg["model"]["dropout"]) == (24, 3, 0.1)
    assert cfg["loss"]["_target_"] == "seglab.losses.Dice"  # one of seglab's own options, chosen by the user's preset
    assert (cfg["trainer"]["epochs"], cfg["data"]["image_size"]) == (7, 48)
    assert cfg["data"]["name"] == "shapes" and cfg["seed"] == 42  # the rest is seglab's defaults


def test_a_users_option_is_checked_by_seglabs_schema(user_dir):
    (user_dir / "model" / "my_unet.yaml").write_text(MY_UNET.replace("depth: 3", "depth: 9"))
    done = run_cli("--config-dir", str(user_dir), "model=my_unet", cwd=user_dir.parent, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["seglab: model.depth=9 is not allowed: use an integer from 1 to 6 (the paper uses 4)."]


@pytest.mark.parametrize(("edit", "named"), [
    (("depth: 3", "deepth: 3"), ["in model/my_unet.yaml:", "model.deepth", "did you mean depth?"]),
    (("depth: 3", "depth: [3"), ["not valid YAML", "my_unet.yaml", "line 8"]),
])
def test_a_mistake_in_a_users_file_is_one_line_naming_it(user_dir, edit, named):
    (user_dir / "model" / "my_unet.yaml").write_text(MY_UNET.replace(*edit))
    done = run_cli("--config-dir", str(user_dir), "+experiment=mine", cwd=user_dir.parent, check=False)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("seglab: ") and all(part in line for part in named), line


def test_seglabs_own_option_wins_over_a_users_file_of_the_same_name(user_dir):
    (user_dir / "model" / "unet.yaml").write_text(MY_UNET.replace("base_filters: 24", "base_filters: 99"))
    assert composed(user_dir, "model=unet")["model"]["base_filters"] == 16


def test_a_module_path_of_before_the_layered_layout_is_one_line_naming_it(user_dir):
    # A user's preset written against the old layout: seglab.sweep is seglab.engine.sweep now. Hydra builds
    # its callbacks before the first job, so this fails before TensorFlow loads.
    (user_dir / "experiment" / "old.yaml").write_text(
        "# @package _global_\nhydra:\n  callbacks:\n    mlflow_sweep:\n      _target_: seglab.sweep.MlflowSweep\n")
    done = run_cli("--config-dir", str(user_dir), "--multirun", "+experiment=old", "model.depth=2",
                   f"tracking.uri=sqlite:///{user_dir.parent}/mlflow.db", cwd=user_dir.parent, check=False)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("seglab: hydra.callbacks.mlflow_sweep._target_=seglab.sweep.MlflowSweep: No module named 'seglab.sweep'")
    assert "docs/configuration.md" in line

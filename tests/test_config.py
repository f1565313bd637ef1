"""Config composition for every group option, and the schema rejecting bad values fast."""

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seglab import schema
from tests.conftest import CONF_DIR, run_cli

GROUPS = ("model", "loss", "data", "optimizer", "trainer", "tracking")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    validated = schema.validate(cfg)
    assert OmegaConf.select(cfg, group) is not None
    if "_target_" in cfg[group]:
        assert cfg[group]._target_.startswith(("seglab.", "keras."))
    assert validated.data.num_classes == len(validated.data.class_names)


def test_defaults_are_the_documented_ones(compose_cfg):
    cfg = compose_cfg()
    assert cfg.model._target_ == "seglab.models.unet.build"
    assert cfg.loss._target_ == "seglab.losses.CrossEntropy"
    assert cfg.data.name == "shapes"
    assert cfg.tracking.uri == "sqlite:///mlflow.db"
    assert cfg.deterministic is True
    assert cfg.data.source.image_size == cfg.data.image_size  # interpolated


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.epochs=-1", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("data.image_size=40", "data.image_size"),  # not a multiple of 2**depth = 16
        ("model.dropout=1.5", "model.dropout"),
        ("optimizer.learning_rate=0", "optimizer.learning_rate"),
        ("optimize_metric=val_accuracy", "optimize_metric"),
        ("data.num_classes=4", "data.class_names"),
        ("trainer.worst_samples=-1", "trainer.worst_samples"),
    ],
)
def test_schema_rejects_out_of_range_values_naming_the_key(compose_cfg, override, key):
    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.")):
        schema.validate(compose_cfg(override))


def test_registering_needs_a_logged_model(compose_cfg):
    assert schema.validate(compose_cfg("tracking.register_as=shapes-unet")).tracking.register_as == "shapes-unet"
    with pytest.raises(schema.ConfigError, match=r"tracking\.register_as='shapes-unet' .*keep tracking\.log_model on"):
        schema.validate(compose_cfg("tracking.register_as=shapes-unet", "tracking.log_model=false"))


def test_image_size_error_suggests_a_valid_size(compose_cfg):
    with pytest.raises(schema.ConfigError, match="multiple of 16"):
        schema.validate(compose_cfg("data.image_size=40"))


def test_print_config_is_fast_and_imports_no_tensorflow(tmp_path):
    start = time.perf_counter()
    done = run_cli("--cfg", "job", cwd=tmp_path, env={"PYTHONVERBOSE": ""})
    assert time.perf_counter() - start < 5  # measured ~0.4 s; the bound is 2 s on an idle machine
    assert "_target_: seglab.models.unet.build" in done.stdout
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", "import sys, seglab.__main__, seglab.schema; print('tensorflow' in sys.modules)"],
        capture_output=True, text=True, env={"PYTHONPATH": CONF_DIR + "/.."},
    )
    assert probe.stdout.strip() == "False"


@pytest.mark.parametrize(
    "args,expected",
    [
        (("trainer.epochz=3",), "Key 'epochz' not in 'TrainerConfig'"),
        (("trainer.epochs=abc",), "trainer.epochs"),
        (("model=unett",), "Available options in 'model'"),
        (("trainer.epochs=-2",), "trainer.epochs=-2 is not allowed"),
    ],
)
def test_cli_rejects_bad_input_quickly_with_nonzero_exit(tmp_path, args, expected):
    start = time.perf_counter()
    done = run_cli(*args, cwd=tmp_path, check=False)
    elapsed = time.perf_counter() - start
    assert done.returncode != 0
    assert expected in done.stderr + done.stdout
    assert elapsed < 10, f"bad input took {elapsed:.1f}s to reject"
    assert not (tmp_path / "mlflow.db").exists()  # rejected before any run was opened


@pytest.mark.parametrize(
    "override,key",
    [
        ('data.class_names=[object,"back(ground)",boundary]', "data.class_names"),  # MLflow rejects '(' in metric names
        ("loss.ignore_index=2", "loss.ignore_index"),  # a real class cannot be ignored by the loss alone
    ],
)
def test_schema_rejects_values_that_would_fail_mid_training(compose_cfg, override, key):
    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.")):
        schema.validate(compose_cfg(override))

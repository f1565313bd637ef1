"""`python -m seglab --help` lists what conf/ and the schema hold, so it cannot drift from them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seglab import errors
from tests.conftest import CONF_DIR, ROOT


def _help(*overrides: str) -> str:
    done = subprocess.run([sys.executable, "-m", "seglab", "--help", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_lists_every_option_of_every_group_and_marks_the_chosen_ones():
    text = _help("model=fcn8")
    for group in ("model", "loss", "data", "optimizer", "trainer", "tracking", "debug", "experiment", "hparams_search"):
        listed = re.search(rf"^\+?{group}:\n((?:  .*\n)+)", text, re.M)
        assert listed, group
        names = {re.match(r"\s+\*?\s*(\S+)", line).group(1) for line in listed.group(1).splitlines()}
        assert names == {p.stem for p in Path(CONF_DIR, group).glob("*.yaml")}, group
    assert re.search(r"^  \* fcn8 ", text, re.M) and re.search(r"^    unet ", text, re.M)
    assert "_schema" not in text  # the ConfigStore's schema entries are not options


def test_help_gives_each_main_key_its_type_value_and_yaml_comment():
    text = _help("trainer.epochs=7")
    assert re.search(r"^  trainer\.epochs=7 +int +\[integer >= 1\] passes over the training split$", text, re.M)
    assert re.search(r"^  verbose=False +bool +true: library notices", text, re.M)
    from omegaconf import OmegaConf

    trainer = OmegaConf.load(Path(CONF_DIR, "trainer", "default.yaml"))
    for key in trainer:
        if key != "defaults":
            assert f"  trainer.{key}=" in text, key
    assert "python -m seglab +debug=fast" in text  # the examples


@pytest.mark.parametrize("choices", [(), ("model=unet_mobilenet", "loss=dice", "data=pets", "optimizer=sgd"),
                                     ("model=fcn8", "loss=weighted", "data=coco_cat", "scheduler=step")])
def test_help_lists_every_key_of_the_chosen_options_with_its_value(choices, compose_cfg):
    from omegaconf import OmegaConf

    from seglab.tracking import flatten

    text = _help(*choices)
    cfg = compose_cfg(*choices)
    for group in ("model", "loss", "data", "optimizer", "scheduler", "trainer", "tracking"):
        keys = flatten(OmegaConf.to_container(cfg[group], resolve=False))
        for key in keys:
            if not key.endswith("_target_"):
                value = OmegaConf.select(cfg, f"{group}.{key}")
                assert f"  {group}.{key}={value}" in text, (group, key)


def test_help_gives_the_ranges_the_schema_checks():
    text = _help("model=unet_mobilenet", "loss=dice", "data=pets")
    assert re.search(r"^  model\.alpha=1\.0 +float +\[positive width multiplier\] MobileNetV2 width multiplier", text, re.M)
    assert re.search(r"^  model\.encoder\.weights=imagenet +str +imagenet \| null", text, re.M)  # nested keys and their comment
    assert re.search(r"^  loss\.smooth=1\.0 +float +\[float >= 0\] added to numerator", text, re.M)
    assert re.search(r"^  data\.source\.val_percent=\d+ +int +\[integer from 1 to 50\]", text, re.M)
    assert re.search(r"^  model\.bn_momentum=0\.9 +float +\[momentum in \(0, 1\)\]", text, re.M)  # an interval is kept
    # The default model's depth: a range no YAML comment repeats, read from UNetConfig's check.
    assert re.search(r"^  model\.depth=\d +int +\[integer from 1 to 6\]", _help(), re.M)


COMMANDS = ("seglab", "seglab.bench", "seglab.evaluate", "seglab.predict", "seglab.check_determinism", "seglab.report",
            "seglab.data", "seglab.models", "seglab.export")
# Run as `python -m COMMAND FLAG`, then say whether TensorFlow was imported on the way.
_RUN_AND_TELL = """
import runpy, sys
sys.argv = [sys.argv[1], sys.argv[2]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as done:
    code = done.code or 0
else:
    code = 0
print("tensorflow loaded" if "tensorflow" in sys.modules else "tensorflow not loaded", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help_with_its_usage_before_tensorflow_loads(command, flag):
    done = subprocess.run([sys.executable, "-c", _RUN_AND_TELL, command, flag], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert f"python -m {command}" in done.stdout, done.stdout  # the usage line names the command
    assert "Traceback" not in done.stderr and "tensorflow not loaded" in done.stderr, done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help_read_by_a_reader_that_left_ends_without_a_traceback(command):
    """`python -m seglab.predict --help | head -1`: the reader is gone before the usage is written. The pipe's
    read end is closed before the command starts, so every write fails, whatever the timing."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", command, "--help"], cwd=ROOT, stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    finally:
        os.close(write)
    assert done.returncode == errors.EXIT_READER_GONE and done.stderr == "", (done.returncode, done.stderr)

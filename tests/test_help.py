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


def _help(*overrides: str, cwd: Path = ROOT) -> str:
    done = subprocess.run([sys.executable, "-m", "seglab", "--help", *overrides], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stdout


def _key_rows(text: str) -> dict[str, str]:
    """{key: what follows its value and type} for each row of the keys' section."""
    section = text.split("== Keys of the chosen options", 1)[1].split("\n\n", 1)[0]
    rows = [re.match(r"^  (\S+?)=\S*(?: .*?)?  +(?:\w+ +)?(.*)$", line) for line in section.splitlines()[1:]]
    return {row.group(1): row.group(2) for row in rows if row}


def _range_and_description(about: str) -> tuple[str, str]:
    """(the range the schema checks, in brackets at the start, or ""; the key's description after it)."""
    if not about.startswith("["):
        return "", about
    # The first "]" that ends the range with as many brackets opened as closed in it (an interval closes with "]" or
    # ")": "[fraction in (0, 1]] random ..."), else the first one: an aside cut in half ("[integer >= 0 (0]").
    ends = [i for i, char in enumerate(about) if char == "]" and about[i + 1 : i + 2] in ("", " ")]
    assert ends, about
    balanced = [i for i in ends if sum(map(about[1:i].count, "([")) == sum(map(about[1:i].count, ")]"))]
    end = (balanced or ends)[0]
    return about[1:end], about[end + 1 :].strip()


def _description(about: str) -> str:
    return _range_and_description(about)[1]


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


def test_help_with_a_users_own_option_lists_its_keys_described_by_the_schema(tmp_path):
    """`--config-dir my_conf model=my_unet --help` printed a traceback (the option's file was looked for in
    seglab's conf/ only); now its keys are listed with their values and, where its YAML says nothing, the schema's words."""
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "experiment").mkdir()
    (tmp_path / "my_conf" / "model" / "my_unet.yaml").write_text(
        "# My U-Net, shallower.\ndefaults:\n  - unet_schema\n  - _self_\n_target_: seglab.models.unet.build\n"
        "base_filters: 8   # narrow\ndepth: 3\ndropout: 0.1\nbatch_norm: true\nbn_momentum: 0.9\n")
    (tmp_path / "my_conf" / "experiment" / "mine.yaml").write_text("# @package _global_\n# Mine: a longer run.\ntrainer:\n  epochs: 30\n")
    text = _help("--config-dir", "my_conf", "model=my_unet", cwd=tmp_path)
    assert re.search(r"^  \* my_unet +My U-Net, shallower\.$", text, re.M) and re.search(r"^    unet ", text, re.M)
    rows = _key_rows(text)
    assert rows["model.base_filters"] == "[integer >= 1] narrow"  # its own comment
    assert rows["model.depth"].startswith("[integer from 1 to 6] downsampling levels")  # the schema's
    for key in ("model.dropout", "model.batch_norm", "model.bn_momentum"):
        assert _description(rows[key]), key
    assert re.search(r"^  model\.depth=3 ", text, re.M)
    text = _help("--config-dir", "my_conf", "+experiment=mine", cwd=tmp_path)
    assert re.search(r"^  \* mine +Mine$", text, re.M) and re.search(r"^  trainer\.epochs=30 ", text, re.M)


GROUPS = ("model", "loss", "data", "optimizer", "scheduler", "trainer", "tracking")


def test_every_key_of_every_option_has_a_whole_range_and_a_description():
    """Ranges were cut inside an aside (`[integer >= 0 (0]`), comments continued on the next line were cut
    (`... optimize_metric; tag`), and keys without a YAML comment had no description."""
    import seglab.config.schema  # noqa: F401  registers the schemas in Hydra's ConfigStore
    from hydra import compose, initialize_config_dir

    from seglab.cli import helptext

    undescribed = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for group in GROUPS:
            for option in sorted(p.stem for p in Path(CONF_DIR, group).glob("*.yaml")):
                cfg = compose(config_name="config", overrides=[f"{group}={option}"], return_hydra_config=True)
                for key, _, _, about in helptext.main_keys(cfg):
                    if key.startswith(f"{group}."):
                        allowed = _range_and_description(about)[0]
                        opened, closed = sum(map(allowed.count, "([")), sum(map(allowed.count, ")]"))
                        assert opened == closed, (key, about)  # "[integer >= 0 (0]": an aside cut in half
                        undescribed += [] if _description(about) else [f"{group}={option}: {key}"]
    assert not undescribed
    rows = _key_rows(_help())
    assert rows["data.source.test_size"].startswith("[integer >= 0] held out")
    assert rows["data.augment.crop_min"].startswith("[fraction in (0, 1]] random scale-crop")
    assert rows["tracking.log_model"].endswith("| last (the last epoch's) | false (none)")


@pytest.mark.parametrize("fix,expected", [
    ("use an integer >= 0 (0: no grid)", "integer >= 0"),
    ("use a fraction in (0, 1] (1.0: off)", "fraction in (0, 1]"),
    ("use a float in [0, 1) (0.99 or 0.999 are usual)", "float in [0, 1)"),
    ("use a momentum in (0, 1): 0.9 follows the batch statistics within tens of steps", "momentum in (0, 1)"),
    ("use null or an integer >= 1 (k: an update every k batches)", "null or an integer >= 1"),
])
def test_a_range_is_the_fix_without_its_asides_and_reasons(fix, expected):
    from seglab.config import ranges

    assert ranges.compact(fix) == expected


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

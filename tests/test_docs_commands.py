"""Every documented command works as written: each shell command of README.md, docs/*.md and
experiments/README.md (fenced bash/sh/console blocks, lines starting `python -m seglab` or
`seglab`, `\\` continuations joined) is

- composed and validated as its command would compose it (`test_every_documented_command_composes`,
  seconds: the schema's checks, a sweep's every job, the bench's every configuration);
- and each kind of command really runs once through the real CLI, in a temporary directory, with
  tiny overrides appended where it trains (`test_each_kind_of_documented_command_runs`, slow): a
  training that registers a model, evaluate on it, predict, a preset sweep and its report, the bench,
  `seglab.data`, `seglab.models`, `--cfg job`; the commands that need a download (Oxford-IIIT Pet
  from tfds, ImageNet weights) or files this machine lacks (COCO) fail fast with their one-line message.

Placeholders are filled as a reader would: `<run id>` with a real run's id, `DIR` with a generated
Oxford-IIIT Pet folder (seglab.data.pets_like), `photos/` with a few images, `my_conf/` with the
files docs/configuration.md shows.  Commands that are not run are in SKIPPED, each with its reason.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY, inherited_env, run_module

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]
SHELL_FENCES = ("bash", "sh", "console", "shell")
FAKE_RUN_ID = "0123456789abcdef0123456789abcdef"
RUN_ID = "<run id>"

# Commands not run here, matched by a part of their text: each is still composed and validated.
SKIPPED = {
    "hydra/launcher=slurm": "needs a SLURM cluster with GPUs; tests/test_slurm.py runs sweeps on a real one-node cluster",
    "hydra/launcher=submitit_slurm": "needs a SLURM cluster; tests/test_slurm.py runs this command on a real one-node cluster",
    "tracking.uri=http://mlflow-host:5000": "names a tracking server of yours",
    "trainer.epochs=30": "a 30-epoch training (docs/resume.md's story); tests/test_resume.py kills and resumes real runs",
    "trainer.resume=<run id>": "tests/test_resume.py continues a FINISHED run by id",
    "tracking.uri=http://localhost:5000": "trains against a tracking server: tests/test_server.py trains against tests/tracking_stack.py's",
    "tracking.uri=http://127.0.0.1:5000      # train here": "trains against a tracking server, as the line above",
}
# Commands that need what no test machine has: they must fail in one line, naming what is missing.
NEEDS_DOWNLOAD = {
    "data=pets": "The data set oxford_iiit_pet is not prepared",
    "model=fcn8": "The ImageNet weights of the VGG16 encoder are not available",
    "data=coco_cat": "data.source.path=data/coco: no such directory",
}


@dataclass
class Command:
    where: str  # file:line
    text: str  # as written (continuations joined)

    @property
    def argv(self) -> list[str]:
        """The words after `python -m` (or the `seglab` script), placeholders as written."""
        words = shlex.split(self.text.replace(RUN_ID, "RUN_ID"), comments=True)
        return words[2:] if words[:2] == ["python", "-m"] else words

    @property
    def module(self) -> str:
        return self.argv[0]

    @property
    def args(self) -> list[str]:
        return self.argv[1:]


def documented_commands() -> list[Command]:
    found = []
    for path in DOC_FILES:
        fence, pending, start = None, "", 0
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                fence = stripped[3:].strip() or "text" if fence is None else None
                continue
            if fence not in SHELL_FENCES:
                continue
            stripped = stripped.removeprefix("$ ")
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text, pending = pending + stripped, ""
            if re.match(r"(python -m seglab|seglab)(\s|\.|$)", text):
                found.append(Command(f"{path.relative_to(ROOT)}:{start}", text))
    return found


COMMANDS = documented_commands()


def _ids(commands):
    return [f"{c.where} {' '.join(c.args)[:60]}" for c in commands]


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """A sweep's jobs: every combination of the comma-separated values (`key=a,b`), as the basic sweeper makes them."""
    choices = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        swept = sep and "," in value and not value.startswith(("[", "'")) and not key.startswith("hydra")
        choices.append([f"{key}={v}" for v in value.split(",")] if swept else [arg])
    return [list(job) for job in itertools.product(*choices)]


def config_dir_files(root: Path) -> None:
    """The files of docs/configuration.md's `my_conf/` example: each ```yaml block after a paragraph naming its path."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name, body in re.findall(r"`(my_conf/[\w/]+\.yaml)`[^`]*?(?:`[^`]*`[^`]*?)*?```yaml\n(.*?)```", text, re.S):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)


def training_overrides(command: Command, config_dir: Path) -> list[str]:
    """What `python -m seglab ARGS` composes from: the flags left out (a --config-dir as Hydra's search path)."""
    args, out = command.args, []
    skip = 0
    for i, arg in enumerate(args):
        if skip:
            skip -= 1
        elif arg == "--config-dir":
            out.append(f"hydra.searchpath=[file://{config_dir / args[i + 1]}]")
            skip = 1
        elif arg == "--cfg":
            skip = 1
        elif arg != "--multirun":
            out.append(arg.replace("RUN_ID", FAKE_RUN_ID).replace("=DIR", "=/tmp"))
    return out


def compose_like(command: Command, config_dir: Path) -> int:
    """Compose and validate what `command` would run; the number of configurations checked."""
    from seglab.cli import bench, evaluate, export, predict
    from seglab.config import schema

    name, args = command.module, [a.replace("RUN_ID", FAKE_RUN_ID) for a in command.args]
    if name == "seglab":
        jobs = sweep_jobs(training_overrides(command, config_dir))
    elif name == "seglab.bench":
        options, overrides = bench.parse(args)
        jobs = [job for *_, job in bench.grid(options, overrides)]
    elif name == "seglab.data" and args[:1] == ["inspect"]:
        from seglab.data import inspect

        inspect.parse(args[1:])  # it reads a data set, not a config: tests/test_inspect.py runs it
        return 1
    elif name in ("seglab.data", "seglab.models"):
        group = "data" if name == "seglab.data" else "model"
        jobs = [[f"{group}={args[0]}", *[a.replace("=DIR", "=/tmp") for a in args[1:]]]]
    elif name == "seglab.evaluate":
        evaluate.parse(args)
        return 1
    elif name == "seglab.predict":
        predict.parse(args)
        return 1
    elif name == "seglab.export":
        export.parse(args)  # format, batch size, the exporters' packages, output, the store (./mlflow.db here)
        return 1
    elif name == "seglab.report":
        return 0  # its argument names a sweep in the store: it really runs in the slow test
    else:
        raise AssertionError(f"{command.where}: no check for `{name}`; add one here")
    for job in jobs:
        schema.compose(job)
    return len(jobs)


def coco_files(root: Path) -> None:
    """The COCO-format files docs/own-data.md's data=coco commands name, with the three categories its text says
    (the config reads them: data.num_classes and data.class_names follow from a file's categories): COCO 2017's
    layout under data/coco, and a labelling tool's export/labels.json beside its images."""
    doc = json.dumps({"images": [], "annotations": [],
                      "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}]})
    for annotations, images in (("data/coco/annotations/instances_train2017.json", "data/coco/train2017"),
                                ("data/coco/annotations/instances_val2017.json", "data/coco/val2017"),
                                ("export/labels.json", "export")):
        (root / annotations).parent.mkdir(parents=True, exist_ok=True)
        (root / annotations).write_text(doc)
        (root / images).mkdir(parents=True, exist_ok=True)
        (root / images / "000000000001.jpg").write_bytes(b"")


def test_docs_have_the_commands_this_test_knows():
    modules = {c.module for c in COMMANDS}
    assert {"seglab", "seglab.bench", "seglab.evaluate", "seglab.predict", "seglab.report", "seglab.data", "seglab.models"} <= modules
    for part in (*SKIPPED, *NEEDS_DOWNLOAD):  # a reason for a command that no longer exists is stale
        assert any(part in c.text for c in COMMANDS), part


@pytest.mark.parametrize("command", COMMANDS, ids=_ids(COMMANDS))
def test_every_documented_command_composes(command, tmp_path, monkeypatch):
    from tests.stores import fresh_store

    config_dir_files(tmp_path)
    monkeypatch.chdir(tmp_path)  # with an ./mlflow.db, as where a training ran (evaluate and predict check it is there)
    fresh_store(tmp_path / "mlflow.db")  # an MLflow store: another program's database is refused
    (tmp_path / "photos").mkdir()  # predict's input=photos/
    coco_files(tmp_path)
    checked = compose_like(command, tmp_path)
    assert checked >= (0 if command.module == "seglab.report" else 1)


# ---- really run, once per kind -------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**inherited_env(), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1"}


def run(command: Command, cwd: Path, *extra: str, fill: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command as written (placeholders filled), `extra` appended, from `cwd`."""
    args = list(command.args)
    for old, new in (fill or {}).items():
        args = [a.replace(old, new) for a in args]
    return run_module(command.module, *args, *extra, cwd=cwd, env=_env(), timeout=timeout)


def ok(done: subprocess.CompletedProcess, where: str) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def one(text: str) -> Command:
    """The documented command whose text contains `text` (exactly one)."""
    (found,) = [c for c in COMMANDS if text in c.text]
    return found


def _tiny(command: Command) -> list[str]:
    """TINY, less the keys the command sets itself (its values are the point) or that its preset sweeps."""
    own = {a.split("=")[0] for a in command.args}
    return [o for o in TINY if o.split("=")[0] not in own]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """docs/serving.md's training (it logs, and registers version 1 of shapes-unet): its directory and run id."""
    cwd = tmp_path_factory.mktemp("docs-run")
    command = one("tracking.register_as=shapes-unet")
    done = ok(run(command, cwd, *_tiny(command), "hydra.run.dir=out"), command.where)
    run_id = re.search(r"MLflow run (\w{32})", done.stdout).group(1)
    return cwd, run_id


@pytest.mark.slow
def test_each_kind_of_documented_command_runs(trained, tmp_path):
    from PIL import Image

    from seglab.data import pets_like

    cwd, run_id = trained
    fill = {"RUN_ID": run_id, "tracking.uri=http://127.0.0.1:5000": f"tracking.uri=sqlite:///{cwd}/mlflow.db"}
    # The server's address is replaced by the store the training wrote to: tests/test_server.py runs these verbs on a real server.
    evaluate = one("model_uri=models:/shapes-unet/1 set_alias=champion")
    done = ok(run(evaluate, cwd, "data.source.test_size=16", "data.image_size=32", fill=fill), evaluate.where)
    assert "mean_iou" in done.stdout or "mIoU" in done.stdout, done.stdout

    (cwd / "photos").mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(cwd / "photos" / f"p{i}.png")
    predict = one("input=photos/ output=masks/ tracking.uri")
    ok(run(predict, cwd, fill=fill), predict.where)
    assert sorted(p.name for p in (cwd / "masks").iterdir()) == ["p0.png_mask.png", "p0.png_overlay.png", "p1.png_mask.png", "p1.png_overlay.png"]

    composed = one("python -m seglab --cfg job")
    assert "model:" in ok(run(composed, tmp_path), composed.where).stdout

    pets_like.write_archive(tmp_path / "pets", trainval=12, test=0, seed=1, sides=(80, 120))
    data = one("python -m seglab.data pets")
    ok(run(data, tmp_path, "data.image_size=32", "data.source.val_percent=50", fill={"=DIR": f"={tmp_path}/pets"}), data.where)
    models = one("python -m seglab.models")
    assert "parameters" in ok(run(models, tmp_path), models.where).stdout


@pytest.mark.slow
def test_a_documented_preset_sweep_and_its_report_run(tmp_path):
    sweep = one("python -m seglab +experiment=shapes_unet_width_lr     # a preset")
    # TINY's one width in place of the preset's three: its two learning rates make the sweep.
    ok(run(sweep, tmp_path, *_tiny(sweep), "+debug=fast", timeout=600), sweep.where)
    report = one("python -m seglab.report shapes_unet_width_lr")
    done = ok(run(report, tmp_path), report.where)
    assert len([line for line in done.stdout.splitlines() if "FINISHED" in line]) == 2, done.stdout


@pytest.mark.slow
def test_the_documented_bench_runs(tmp_path):
    bench = one("python -m seglab.bench                                   # default")
    done = ok(run(bench, tmp_path, "bench.steps=2", "bench.warmup=1", "bench.repeats=1", "bench.matmul_size=128", "bench.startup=false",
                  "bench.data=synthetic", "data.image_size=32", "model.depth=2", "model.base_filters=4", "trainer.batch_size=8",
                  f"bench.out={tmp_path}/b.json"), bench.where)
    assert "img/s" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("part, message", NEEDS_DOWNLOAD.items())
def test_commands_that_need_a_download_fail_in_one_line(part, message, tmp_path):
    command = next(c for c in COMMANDS if part in c.args and c.module == "seglab")
    # An empty tfds folder and Keras cache: what a machine that never downloaded them has.
    env_dirs = ("data.source.tfds_dir=" + str(tmp_path / "tfds"),) if part == "data=pets" else ()
    done = subprocess.run([sys.executable, "-m", "seglab", *command.args, *env_dirs, "hydra.run.dir=out"], cwd=tmp_path,
                          env={**_env(), "KERAS_HOME": str(tmp_path / "keras")}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("seglab")]
    assert len(said) == 1 and message in said[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_skipped_commands_are_few_and_named():
    skipped = [c for c in COMMANDS if any(part in c.text for part in SKIPPED)]
    assert 0 < len(skipped) <= 8, _ids(skipped)

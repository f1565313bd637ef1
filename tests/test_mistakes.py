"""Every mistake a new user makes gets one line: each row of MISTAKES runs the real command line in a
subprocess and expects a non-zero exit, exactly one non-empty stderr line, no traceback, the
named key or file in it, and no `mlflow.db` left behind by a command that failed.  Almost all fail
before TensorFlow loads, in one to three seconds.

docs/troubleshooting.md is this table: a test checks that each row there is what the command prints
today; regenerate it with `python -m tests.test_mistakes > docs/troubleshooting.md`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "troubleshooting.md"
RUN = "runs:/0123456789abcdef/model"  # a model URI of a store that does not exist here


@dataclass(frozen=True)
class Mistake:
    command: str  # what the user types after `python -m `
    names: str  # the key, option or file the one line must name
    fix: str  # for the docs: what to do


MISTAKES = [
    # --- the runner: unknown keys and options
    Mistake("seglab trainer.epoch=3", "trainer.epoch", "Fix the spelling: `trainer.epochs=3`."),
    Mistake("seglab +trainer.epoch=3", "trainer.epoch", "A `+` does not make an unknown key valid: `trainer.epochs=3`."),
    Mistake("seglab +foo=1", "foo", "Remove it; `python -m seglab --cfg job` lists every key."),
    Mistake("seglab +model.width=32", "model.width", "Use a key the model has (`model.base_filters` for unet)."),
    Mistake("seglab model=unett", "model=unett", "Choose an option that exists in `conf/model/`."),
    Mistake("seglab loss=dcie", "loss=dcie", "Choose an option that exists in `conf/loss/`."),
    Mistake("seglab data=shapez", "data=shapez", "Choose an option that exists in `conf/data/`."),
    Mistake("seglab optimizer=adamm", "optimizer=adamm", "Choose one of `adam`, `adamw`, `sgd` (`conf/optimizer/`)."),
    Mistake("seglab trainer=fast", "trainer=fast", "Use `trainer=default` and override its keys."),
    Mistake("seglab +experiment=nosuch", "experiment=nosuch", "Choose a preset in `seglab/conf/experiment/`, or add your own directory with `--config-dir`."),
    Mistake("seglab hydra/launcher=slurmm", "hydra/launcher=slurmm", "Choose an installed launcher."),
    Mistake("seglab trainer.epochs", "trainer.epochs", "Overrides are `key=value`."),
    Mistake("seglab 'trainer.epochs=3", "trainer.epochs", "Close the quote (the shell passed it on)."),
    Mistake("seglab --multirun model=unett,unet", "model=unett", "Fix the option before the sweep starts."),
    # --- the runner: types and ranges
    Mistake("seglab trainer.epochs=abc", "trainer.epochs", "Give an integer."),
    Mistake("seglab trainer.epochs=[1,2]", "trainer.epochs", "Give one integer; sweep with `--multirun trainer.epochs=1,2`."),
    Mistake("seglab trainer.epochs=0", "trainer.epochs", "Use at least 1 epoch."),
    Mistake("seglab trainer.epochs=-1", "trainer.epochs", "Use at least 1 epoch."),
    Mistake("seglab trainer.batch_size=0", "trainer.batch_size", "Use at least 1."),
    Mistake("seglab trainer.mask_samples=-2", "trainer.mask_samples", "Use 0 (no mask grid) or more."),
    Mistake("seglab model.depth=0.5", "model.depth", "Give an integer."),
    Mistake("seglab model.depth=9", "model.depth", "Use 1 to 6."),
    Mistake("seglab model.dropout=1.5", "model.dropout", "Use a rate in [0, 1)."),
    Mistake("seglab model.base_filters=0", "model.base_filters", "Use at least 1."),
    Mistake("seglab model=fcn8 model.variant=4s", "model.variant", "Use 32s, 16s or 8s."),
    Mistake("seglab model=unet_mobilenet model.alpha=0.3", "model.alpha", "Use an alpha Keras has weights for, or `model.encoder.weights=null`."),
    Mistake("seglab model=unet_mobilenet model.encoder.weights=null model.encoder.trainable=false", "model.encoder.trainable",
            "A frozen random encoder never learns: train it, or load weights."),
    Mistake("seglab data.image_size=40", "data.image_size", "Use a multiple of the model's downsampling."),
    Mistake("seglab model=fcn8 data.image_size=48", "data.image_size", "Use a multiple of 32 for fcn8 and unet_mobilenet."),
    Mistake("seglab data.image_size=4", "data.image_size", "Use at least 8 px."),
    Mistake("seglab data.num_classes=1", "data.num_classes", "Segmentation needs at least 2 classes."),
    Mistake("seglab data.class_names=[a,b]", "data.class_names", "One name per class."),
    Mistake("seglab data.ignore_index=1", "data.ignore_index", "Use a label that is not a class (e.g. 255), or null."),
    Mistake("seglab data.augment.crop_min=0", "data.augment.crop_min", "Use a fraction in (0, 1]."),
    Mistake("seglab data.shuffle_buffer=0", "data.shuffle_buffer", "Use at least 1."),
    Mistake("seglab data.source.train_size=0", "data.source.train_size", "Use at least 1 image."),
    Mistake("seglab seed=-1", "seed", "Use a non-negative integer."),
    Mistake("seglab seed=abc", "seed", "Use a non-negative integer."),
    Mistake("seglab optimize_metric=val_iou", "optimize_metric", "Use one of the listed metrics."),
    Mistake("seglab optimizer.learning_rate=-0.1", "optimizer.learning_rate", "Use a positive number."),
    Mistake("seglab optimizer.learning_rate=fast", "optimizer.learning_rate", "Use a number, e.g. 1e-3."),
    Mistake("seglab loss=weighted loss.class_weights=[1,2]", "loss.class_weights", "One weight per class."),
    Mistake("seglab loss=weighted loss.class_weights=median", "loss.class_weights", "Use median_frequency, inverse_frequency or a list."),
    Mistake("seglab loss=dice loss.smooth=-1", "loss.smooth", "Use 0 or more."),
    Mistake("seglab loss=dice loss.include_background=false data.background_index=null", "loss.include_background",
            "Name the background class with `data.background_index`."),
    Mistake("seglab trainer.jit_compile=true", "deterministic=false",
            "Keras compiles without XLA while op determinism is on: add `deterministic=false` to use XLA."),
    # --- the runner: files, directories and the tracking store (checked before TensorFlow loads)
    Mistake("seglab data.cache=memroy", "data.cache", "`memory`, `null`, or a path prefix with a directory (`./cache/shapes`)."),
    Mistake("seglab data.cache=/proc/x/cache", "data.cache", "Choose a directory you can write to."),
    Mistake("seglab trainer.checkpoint_dir=/proc/x/ck", "trainer.checkpoint_dir", "Choose a directory you can write to."),
    Mistake("seglab data=pets data.source.kind=folder", "data.source.path", "Give the folder the archives are unpacked in."),
    Mistake("seglab data=pets data.source.kind=folder data.source.path=nope", "data.source.path", "Give a folder that exists."),
    Mistake("seglab data=pets data.source.kind=zip", "data.source.kind", "Use tfds or folder."),
    Mistake("seglab data=coco_cat", "data.source.path", "Download COCO into `data/coco` or point `data.source.path` at it."),
    Mistake("seglab tracking.uri=file:///proc/x", "tracking.uri", "Use a store you can write to, e.g. `sqlite:///mlflow.db`."),
    Mistake("seglab tracking.uri=sqlite:///notes.txt", "notes.txt", "Point it at an MLflow SQLite file or a new file name."),
    Mistake("seglab tracking.uri=sqlite:///nowhere/mlflow.db", "nowhere", "Create the directory first."),
    Mistake("seglab tracking.uri=", "tracking.uri", "Give a tracking URI."),
    Mistake("seglab tracking.experiment=", "tracking.experiment", "Give an experiment name."),
    # --- the other commands
    Mistake("seglab.models unett", "model=unett", "Use a model of `conf/model/`."),
    Mistake("seglab.models", "NAME", "Name a model."),
    Mistake("seglab.models unet model.depth=9", "model.depth", "Use 1 to 6."),
    Mistake("seglab.models fcn8 data.image_size=100", "data.image_size", "Use a multiple of 32."),
    Mistake("seglab.data shapez", "data=shapez", "Use a data set of `conf/data/`."),
    Mistake("seglab.data", "name", "Name a data set."),
    Mistake("seglab.data shapes --passes x", "--passes", "Give an integer."),
    Mistake("seglab.data shapes data.cache=memroy", "data.cache", "`memory`, `null` or a path prefix with a directory."),
    Mistake("seglab.evaluate data=shapes", "model_uri", "Give `model_uri=runs:/<run id>/model`."),
    Mistake(f"seglab.evaluate model_uri={RUN}", "mlflow.db", "Run where training ran, or pass `tracking.uri=`."),
    Mistake(f"seglab.evaluate model_uri={RUN} data=shapez", "data=shapez", "Use a data set of `conf/data/`."),
    Mistake(f"seglab.evaluate model_uri={RUN} +trainer.epoch=1", "trainer.epoch", "Remove the unknown key."),
    Mistake("seglab.predict", "model_uri", "Give model_uri, input and output."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=photos", "output=photos", "Write the masks outside the input folder."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=photos/masks", "output=photos/masks", "Write the masks outside the input folder."),
    Mistake(f"seglab.predict model_uri={RUN} input=nope output=masks", "input=nope", "Give an image file or folder."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=masks", "mlflow.db", "Run where training ran, or pass `tracking.uri=`."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=masks batch_size=0", "batch_size", "Use at least 1."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=masks colour=1", "colour", "Remove the unknown key."),
    Mistake("seglab.report", "sweep", "Name a sweep: its parent run id, experiment or run name."),
    Mistake("seglab.report my-sweep", "mlflow.db", "Run where the sweep ran, or pass `--tracking-uri`."),
    Mistake("seglab.report my-sweep --tracking-uri sqlite:///notes.txt", "notes.txt", "Point it at the sweep's store."),
    Mistake("seglab.report my-sweep --format pdf", "--format", "Use text, markdown or csv."),
    Mistake("seglab.bench bench.jit=false,true", "trainer.jit_compile", "Add `deterministic=false` to measure XLA."),
]


def workdir(path: Path) -> Path:
    """What the commands find in the current directory: a folder of photos and a text file."""
    (path / "photos").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path / "photos" / "cat.png")
    (path / "notes.txt").write_text("not a database\n")
    return path


def answer(mistake: Mistake, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = [sys.executable, "-m", *shlex.split(mistake.command.replace("'", "\\'"))]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def doc_row(mistake: Mistake, line: str) -> str:
    cell = line.replace("|", "\\|")
    return f"| `python -m {mistake.command}` | {cell} | {mistake.fix} |"


@pytest.fixture
def cwd(tmp_path):
    return workdir(tmp_path)


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """Every command run once, three at a time (each is a process of its own, in its own directory)."""
    from concurrent.futures import ThreadPoolExecutor

    dirs = [workdir(tmp_path_factory.mktemp("mistake")) for _ in MISTAKES]
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(answer, MISTAKES, dirs))
    return {m.command: (d, path) for m, d, path in zip(MISTAKES, done, dirs)}


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.command for m in MISTAKES])
def test_mistake_is_one_line(mistake, answers):
    done, cwd = answers[mistake.command]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr and lines, done.stderr[-3000:]
    answer_line = lines[-1]
    assert answer_line.startswith(mistake.command.split()[0] + ":"), answer_line
    assert mistake.names in answer_line, answer_line
    if "--multirun" in mistake.command:
        pass  # a sweep opens its parent run (MLflow may log creating the store) before Hydra composes the jobs; it ends FAILED
    else:
        assert len(lines) == 1, done.stderr[-3000:]
        assert not (cwd / "mlflow.db").exists(), "a failed command left an empty mlflow.db"
    assert doc_row(mistake, answer_line) in DOC.read_text(), f"docs/troubleshooting.md is out of date: {doc_row(mistake, answer_line)}"


def test_full_error_shows_the_traceback(cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run([sys.executable, "-m", "seglab", "data.image_size=40"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" in done.stderr and "ConfigError" in done.stderr


HEADER = """# Troubleshooting: what seglab answers, and the fix

Every mistake below is answered with one line on stderr (`<command>: <what is wrong>`, naming the key
or file; with `--multirun` it is the last line) and exit code 2, before TensorFlow loads; `HYDRA_FULL_ERROR=1` shows the full traceback
instead. `tests/test_mistakes.py` runs each command and checks that this table is what it prints;
regenerate it with `python -m tests.test_mistakes > docs/troubleshooting.md`.

Mistakes found only while the data is read (with TensorFlow loaded) end the same way, with the
file named: a mask label outside the classes, in any split (`data.source.kind=folder` names the
trimap file); a checkpoint that cannot be written (disk full, no permission; the previous
checkpoint stays intact and the MLflow run ends `FAILED`). A corrupt image is skipped with a warning
naming it (`data=pets` folder source, `data=coco_cat` conversion).

Mistakes about an existing run are answered the same way, after TensorFlow loads and before the store
is written to, leaving that run's params, metrics, tags, artifacts and checkpoint as they were
(`tests/test_lifecycle.py`, docs/resume.md): a `trainer.checkpoint_dir` holding another run's
checkpoint (`trainer.checkpoint_dir=<dir> holds the checkpoint of run <id>, ...; give this run another
trainer.checkpoint_dir, or continue that run with trainer.resume=<id>`); `trainer.resume=<id>` of a
`FINISHED` run with no epochs left (`nothing left to train: run <id> already has N epochs; add
trainer.epochs=M (M > N) to train more`), of a checkpoint of another architecture, of an evaluation
run or a sweep's parent; `seglab.evaluate` of a model on other data than it was trained on (`the
model of run <id> was trained on data=pets (its data.name param), but this evaluation has
data=shapes: add data=pets`).

| you typed | seglab answers | fix |
|---|---|---|
"""


if __name__ == "__main__":  # regenerate docs/troubleshooting.md
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i, m in enumerate(MISTAKES):
            done = answer(m, workdir(Path(tmp) / str(i)))
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            rows.append(doc_row(m, lines[-1] if lines else "(nothing)"))
    sys.stdout.write(HEADER + "\n".join(rows) + "\n")

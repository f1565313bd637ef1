"""Every mistake a new user makes gets one line and changes no record (issue 32): each row of MISTAKES runs the real
command line in a process of its own, in a directory that holds a store with a finished run (a real one-epoch
training's, made once per process and copied per row: Mistake.store), and expects exit code 2, exactly one
non-empty stderr line, no traceback, the named key or file in it, an answer within a few CPU seconds, and the
store byte for byte as it was: every table of the SQLite file (runs, params, metrics, tags, logged models,
datasets, inputs, ...) and every file of its artifacts (tests/stores.store_dump).  No other store may appear.
Almost all fail before TensorFlow loads, in one to three seconds.  A row's `setup` puts the files it needs in the
command's directory (a broken data folder, a preset of the user's, the held run deleted in the UI).

docs/troubleshooting.md is this table: a test checks that each row there is what the command prints
today; regenerate it with `python -m tests.test_mistakes > docs/troubleshooting.md`.
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image

from seglab.config import schema
from tests.conftest import inherited_env
from tests.stores import dump_changes, store_dump
from tests.zygote import BEFORE_TENSORFLOW, Zygote

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "troubleshooting.md"
RUN = "runs:/0123456789abcdef/model"  # a model URI of a store that does not exist here
NO_RUN = "0123456789abcdef0123456789abcdef"  # a run id the (empty) store.db does not have
SMALL = "data.image_size=32 data.source.train_size=48 data.source.val_size=16"  # rows that read the data: quick to make


def broken_pets(cwd: Path) -> None:
    """An Oxford-IIIT Pet folder whose photos are not images (trimaps fine)."""
    for name in ("Abyssinian_1", "Abyssinian_2", "beagle_1"):
        (cwd / "pets" / "images").mkdir(parents=True, exist_ok=True)
        (cwd / "pets" / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
        (cwd / "pets" / "images" / f"{name}.jpg").write_text("not a JPEG\n")
        Image.fromarray(np.full((8, 8), 2, np.uint8)).save(cwd / "pets" / "annotations" / "trimaps" / f"{name}.png")


def truncated_coco(cwd: Path) -> None:
    """COCO's layout with an annotations file cut short, as an interrupted unpacking leaves it."""
    for split in ("train2017", "val2017"):
        (cwd / "coco" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cwd / "coco" / split / "000000000001.jpg")
        (cwd / "coco" / "annotations").mkdir(exist_ok=True)
        (cwd / "coco" / "annotations" / f"instances_{split}.json").write_text('{"images": [{"id": 1, "file_name": "0000')


def user_presets(cwd: Path) -> None:
    """A directory of the user's own presets, one with a YAML syntax error."""
    (cwd / "mine" / "experiment").mkdir(parents=True, exist_ok=True)
    (cwd / "mine" / "experiment" / "broken.yaml").write_text("# @package _global_\nmodel:\n  depth: [3\n")


def latin1_preset(cwd: Path) -> None:
    """A preset saved in Latin-1 by an editor (an accented comment), as Windows editors still do."""
    (cwd / "mine" / "experiment").mkdir(parents=True, exist_ok=True)
    (cwd / "mine" / "experiment" / "latin.yaml").write_bytes("# @package _global_\n# réglage\ntrainer:\n  epochs: 2\n".encode("latin-1"))


def list_preset(cwd: Path) -> None:
    """A preset written as a list of overrides."""
    (cwd / "mine" / "experiment").mkdir(parents=True, exist_ok=True)
    (cwd / "mine" / "experiment" / "list.yaml").write_text("# @package _global_\n- trainer.epochs=2\n- model.depth=2\n")


def deleted_in_the_ui(cwd: Path) -> None:
    """The held run deleted in the MLflow UI (restorable: its lifecycle stage is `deleted`)."""
    from mlflow import MlflowClient  # lazily: MLflow loads in this process only where a row needs it

    MlflowClient(f"sqlite:///{cwd}/mlflow.db").delete_run(held_run()[1])


def checkpoints_gone(cwd: Path) -> None:
    """The held run's checkpoints deleted from its artifacts and from its output directory, to free space."""
    for directory in [*cwd.glob("mlruns/*/*/artifacts/checkpoints"), *cwd.glob("outputs/*/*/checkpoints")]:
        shutil.rmtree(directory)


def unpackaged_preset(cwd: Path) -> None:
    """A preset without `# @package _global_`: Hydra puts its keys under `experiment.`."""
    (cwd / "mine" / "experiment").mkdir(parents=True, exist_ok=True)
    (cwd / "mine" / "experiment" / "plain.yaml").write_text("trainer:\n  epochs: 2\n")


# The store every row finds: a real tiny training's (one epoch), made once per process in a directory of its own and
# copied into each row's directory as a user's directory looks after training: the SQLite file, ./mlruns (the run's
# artifacts and logged model) and ./outputs (its checkpoints).
HELD_TRAINING = ("data.image_size=32", "data.source.train_size=16", "data.source.val_size=8", "model.depth=2",
                 "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=8", "trainer.mask_samples=1")
RUN_ID = "RUN_ID"  # in a row's command: the id of the run the store holds (the docs show it so)
_HELD: dict[str, object] = {}


def held_run() -> tuple[Path, str]:
    """The directory of the training the rows' stores are copies of (./mlflow.db, ./mlruns, ./outputs), and its run id."""
    if not _HELD:
        folder = Path(tempfile.mkdtemp(prefix="seglab-held-run-"))
        atexit.register(shutil.rmtree, folder, True)
        zygote = _ZYGOTES.get()
        try:
            done = zygote.run("seglab", list(HELD_TRAINING), folder, user_env(), 900, user_env())
        finally:
            _ZYGOTES.put(zygote)
        assert done.returncode == 0, done.stderr[-3000:]
        with sqlite3.connect(folder / "mlflow.db") as connection:
            (run_id,), = connection.execute("select run_uuid from runs").fetchall()
        connection.close()
        _HELD.update(folder=folder, run_id=run_id)
    return _HELD["folder"], _HELD["run_id"]


def hold_a_run(cwd: Path, name: str) -> None:
    """Put the held run's store in `cwd` as `name`, with its artifacts and checkpoints; the paths the store records
    (artifact locations, the output directory) are moved with it, as when a user moves a project directory."""
    folder, _ = held_run()
    shutil.copytree(folder, cwd, dirs_exist_ok=True, ignore=shutil.ignore_patterns("mlflow.db"))
    shutil.copyfile(folder / "mlflow.db", cwd / name)
    with sqlite3.connect(cwd / name) as connection:
        for (table,) in connection.execute("select name from sqlite_master where type='table'").fetchall():
            for column in [c[1] for c in connection.execute(f'pragma table_info("{table}")') if "CHAR" in c[2].upper() or
                           "TEXT" in c[2].upper()]:
                connection.execute(f'update "{table}" set "{column}" = replace("{column}", ?, ?) where "{column}" like ?',
                                   (str(folder), str(cwd), f"%{folder}%"))
    connection.close()


@dataclass(frozen=True)
class Mistake:
    command: str  # what the user types after `python -m `
    names: str  # the key, option or file the one line must name
    fix: str  # for the docs: what to do
    setup: Optional[Callable[[Path], None]] = None  # files the command finds in its directory
    reads_data: bool = False  # found once the data is read (TensorFlow loaded): more CPU seconds to answer
    env: tuple[tuple[str, str], ...] = ()  # variables the user's shell has set (shown before the command in the docs)
    # Where the row's directory holds a store with a finished run (HELD_TRAINING's): the file the command would write
    # to, which must be byte for byte as it was after the refusal; None where the row is about there being no store
    # (and none may be left behind).
    store: Optional[str] = "mlflow.db"

    def shown(self) -> str:
        """The command as the user typed it, its environment first."""
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env), f"python -m {self.command}"])


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
    Mistake("seglab +experiment=nosuch", "experiment=nosuch", "Choose a preset in `experiments/`, or add your own directory with `--config-dir`."),
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
    Mistake("seglab data.image_size=[32,64,96]", "data.image_size", "Give one side or [height, width]."),
    Mistake("seglab model=segformer data.image_size=48", "data.image_size=48",
            "Use the size suggested: a multiple of 32 and at least 64 for segformer."),
    Mistake("seglab model=segformer data.image_size=[64,48]", "data.image_size",
            "Use a multiple of 32 on each side, and at least 64 for segformer."),
    Mistake("seglab data.resize=fit", "data.resize", "fit labels its padding `data.ignore_index`: set one (e.g. 255)."),
    Mistake("seglab data.num_classes=1", "data.num_classes", "Segmentation needs at least 2 classes."),
    Mistake("seglab data.class_names=[a,b]", "data.class_names", "One name per class."),
    Mistake("seglab data.ignore_index=1", "data.ignore_index", "Use a label that is not a class (e.g. 255), or null."),
    Mistake("seglab data.augment.crop_min=0", "data.augment.crop_min", "Use a fraction in (0, 1]."),
    Mistake("seglab data.shuffle_buffer=0", "data.shuffle_buffer", "Use at least 1."),
    Mistake("seglab data.source.train_size=0", "data.source.train_size", "Use at least 1 image."),
    Mistake("seglab trainer.batch_size=900", "trainer.batch_size=900", "Use at most the training split's size (800)."),
    Mistake("seglab trainer.overfit_batches=101", "trainer.overfit_batches=101", "Use at most the 100 batches the split has."),
    Mistake("seglab data.class_names=[object,object,boundary]", "data.class_names", "Give each class its own name."),
    Mistake("seglab seed=-1", "seed", "Use an integer from 0 to 2**32-1."),
    Mistake("seglab seed=abc", "seed", "Use an integer from 0 to 2**32-1."),
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
    Mistake("seglab seed=4294967296", "seed=4294967296", "Use an integer from 0 to 2**32-1 (NumPy's seeds are 32-bit)."),
    # --- the runner: settings that would train on nothing, or be ignored
    Mistake("seglab loss=tversky loss.alpha=0 loss.beta=0", "loss.alpha=0.0", "Weigh false positives or negatives: 0.5 and 0.5 is soft Dice."),
    Mistake("seglab loss=focal loss.alpha=[0,0,0]", "loss.alpha=[0.0, 0.0, 0.0]", "Give a class a weight > 0, or `loss.alpha=null`."),
    Mistake("seglab trainer.epochs=2 trainer.gradient_accumulation_steps=201", "trainer.gradient_accumulation_steps=201",
            "Accumulate at most the run's batches (epochs x batches per epoch), or train more epochs."),
    Mistake("seglab optimizer.ema_momentum=0.999", "optimizer.ema_momentum=0.999", "Add `optimizer.ema=true`: the momentum is the average's."),
    Mistake("seglab --multirun hydra/launcher=joblib hydra.launcher.n_jobs=0 seed=1,2", "hydra.launcher.n_jobs=0",
            "Run at least one job at a time, or -1 for one per CPU."),
    Mistake("seglab --multirun hydra/launcher=submitit_local hydra.launcher.timeout_min=0 seed=1,2", "hydra.launcher.timeout_min=0",
            "Give each job the minutes it needs."),
    # --- the runner: the environment
    Mistake("seglab", "KERAS_BACKEND=jax", "Unset KERAS_BACKEND: seglab runs on TensorFlow.", env=(("KERAS_BACKEND", "jax"),)),
    Mistake("seglab", "TF_CONFIG", "Add `trainer.strategy=multi_worker` to join that cluster, or unset TF_CONFIG.",
            env=(("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:29111", "127.0.0.1:29112"]}, "task": {"type": "worker", "index": 0}}'),)),
    Mistake("seglab", "MLFLOW_TRACKING_URI=sqlite:///notes.txt", "Every command takes its store from MLFLOW_TRACKING_URI when "
            "`tracking.uri` is not given: point it at a store, or unset it.", env=(("MLFLOW_TRACKING_URI", "sqlite:///notes.txt"),)),
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
    Mistake("seglab trainer.checkpoint_dir=/etc/passwd", "trainer.checkpoint_dir", "Name a directory, not a file."),
    Mistake("seglab data.cache=notes.txt/x", "data.cache", "The prefix's directory must be a directory."),
    Mistake("seglab model=unet_mobilenet model.encoder.weights=nope.h5", "model.encoder.weights",
            "Give the weights file's path, or `imagenet`, or `null`."),
    Mistake("seglab model=fcn8 model.encoder.weights=~/w.h5", "~/w.h5", "Quote it for Hydra: `\"model.encoder.weights='~/w.h5'\"`."),
    Mistake("seglab --config-dir nowhere +experiment=mine", "--config-dir", "Give the directory that holds your `experiment/` folder."),
    Mistake("seglab --config-dir mine +experiment=broken", "broken.yaml", "Fix the YAML at the line and column named.", user_presets),
    Mistake("seglab --config-dir mine +experiment=latin", "latin.yaml", "Save the file as UTF-8.", latin1_preset),
    Mistake("seglab --config-dir mine +experiment=list", "list.yaml", "Write keys, not a list of overrides.", list_preset),
    Mistake("seglab --config-dir mine +experiment=plain", "plain.yaml", "Start the preset with `# @package _global_`.", unpackaged_preset),
    # --- the runner: the data, read before the MLflow run opens (TensorFlow loaded; no run recorded)
    Mistake(f"seglab data.num_classes=2 data.class_names=[object,background] {SMALL}", "data.num_classes=2",
            "The masks have labels 0..2: `data.num_classes=3` with three names (or `data.ignore_index=2` if 2 means unlabelled).",
            reads_data=True),
    Mistake("seglab data=pets data.source.kind=folder data.source.path=pets data.image_size=32", "data.source.path=pets",
            "Unpack the archives again: no photo of the split decodes.", broken_pets, reads_data=True),
    Mistake("seglab data=coco_cat data.source.path=coco data.source.cache_dir=cache data.image_size=32",
            "instances_train2017.json", "Unpack the annotations again: the file is cut short.", truncated_coco, reads_data=True),
    # --- the run the store holds (HELD_TRAINING's, one epoch, FINISHED)
    Mistake(f"seglab trainer.resume={RUN_ID} {' '.join(HELD_TRAINING)}", "nothing left to train",
            "Add `trainer.epochs=M` (M greater than the run's epochs) to train more."),
    Mistake(f"seglab trainer.resume={RUN_ID} trainer.epochs=2 {' '.join(HELD_TRAINING[:5])}", "is deleted",
            "Restore the run (`mlflow runs restore --run-id RUN_ID`), or train a new one with `trainer.resume=never`.",
            deleted_in_the_ui, reads_data=True),
    Mistake(f"seglab trainer.resume={RUN_ID} trainer.epochs=3 {' '.join(HELD_TRAINING[:5])}", "is gone from the run's artifacts",
            "Put the checkpoint back, or train a new run with `trainer.resume=never`.", checkpoints_gone, reads_data=True),
    # --- the other commands
    Mistake("seglab.models unett", "model=unett", "Use a model of `conf/model/`."),
    Mistake("seglab.models", "NAME", "Name a model."),
    Mistake("seglab.models unet model.depth=9", "model.depth", "Use 1 to 6."),
    Mistake("seglab.models fcn8 data.image_size=100", "data.image_size", "Use a multiple of 32."),
    Mistake("seglab.data shapez", "data=shapez", "Use a data set of `conf/data/`."),
    Mistake("seglab.data", "name", "Name a data set."),
    Mistake("seglab.data shapes --passes x", "--passes", "Give an integer."),
    Mistake("seglab.data shapes data.cache=memroy", "data.cache", "`memory`, `null` or a path prefix with a directory."),
    Mistake("seglab.data shapes --out photos", "--out", "Give an image file name, e.g. `--out samples.png`."),
    Mistake("seglab.data shapes --out /proc/x/s.png", "--out", "Write it where you can write."),
    Mistake("seglab.data shapes --samples 0", "--samples", "Use 1 or more."),
    Mistake("seglab.data shapes --passes 1", "--passes", "Use 2 or more: the first pass fills the cache."),
    Mistake("seglab.evaluate data=shapes", "model_uri", "Give `model_uri=runs:/<run id>/model`."),
    Mistake(f"seglab.evaluate model_uri={RUN}", "mlflow.db", "Run where training ran, or pass `tracking.uri=`.", store=None),
    Mistake(f"seglab.evaluate model_uri={RUN} data=shapez", "data=shapez", "Use a data set of `conf/data/`."),
    Mistake(f"seglab.evaluate model_uri={RUN} +trainer.epoch=1", "trainer.epoch", "Remove the unknown key."),
    Mistake(f"seglab.evaluate model_uri=runs:/{NO_RUN}/model tracking.uri=sqlite:///store.db", NO_RUN,
            "Use a run id of this store (the MLflow UI, or the last line of training).", store="store.db"),
    Mistake("seglab.evaluate model_uri=models:/m/1 set_alias=latest", "set_alias=latest", "Choose another alias, e.g. `champion`."),
    Mistake(f"seglab.evaluate model_uri=runs:/{RUN_ID}/model set_alias=latest tracking.uri=sqlite:///store.db",
            "set_alias=latest",
            "Choose another alias, e.g. `champion`: refused before the model is evaluated.", store="store.db"),
    Mistake(f"seglab.evaluate model_uri=runs:/{RUN_ID}/model set_alias=champion tracking.uri=sqlite:///store.db", "set_alias",
            "Register the model (`tracking.register_as=NAME` when training) and evaluate `models:/NAME/<version>`.",
            store="store.db"),
    Mistake(f"seglab.evaluate model_uri={RUN} inference.stride=16", "inference.mode=slide", "Add `inference.mode=slide`, or leave the stride out."),
    Mistake(f"seglab.evaluate model_uri=runs:/{NO_RUN}/model tracking.uri=sqlite:///store.db", "KERAS_BACKEND=torch",
            "Unset KERAS_BACKEND.", env=(("KERAS_BACKEND", "torch"),), store="store.db"),
    Mistake(f"seglab.evaluate model_uri={RUN}", "MLFLOW_TRACKING_URI=sqlite:///nowhere.db",
            "Point MLFLOW_TRACKING_URI at the training's store, or pass `tracking.uri=`.",
            env=(("MLFLOW_TRACKING_URI", "sqlite:///nowhere.db"),)),
    Mistake("seglab.predict", "model_uri", "Give model_uri, input and output."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=photos", "output=photos", "Write the masks outside the input folder."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=photos/masks", "output=photos/masks", "Write the masks outside the input folder."),
    Mistake(f"seglab.predict model_uri={RUN} input=nope output=masks", "input=nope", "Give an image file or folder."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=masks", "mlflow.db", "Run where training ran, or pass `tracking.uri=`.",
            store=None),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=masks batch_size=0", "batch_size", "Use at least 1."),
    Mistake(f"seglab.predict model_uri={RUN} input=photos output=masks colour=1", "colour", "Remove the unknown key."),
    Mistake("seglab.predict model_uri=model input=photos output=notes.txt", "output=notes.txt", "Name a directory for the masks."),
    Mistake("seglab.predict model_uri=model input=photos output=/proc/x/masks", "output=/proc/x/masks", "Write the masks where you can write."),
    Mistake("seglab.predict model_uri=model input=notes.txt output=masks", "input=notes.txt", "Give an image or a folder of images."),
    Mistake(f"seglab.predict model_uri=runs:/{NO_RUN}/model input=photos output=masks tracking.uri=sqlite:///store.db", NO_RUN,
            "Use a run id of this store.", store="store.db"),
    Mistake("seglab.report", "sweep", "Name a sweep: its parent run id, experiment or run name."),
    Mistake("seglab.report my-sweep", "MLFLOW_TRACKING_URI=sqlite:///nowhere.db", "Point it at the sweep's store, or pass `--tracking-uri`.",
            env=(("MLFLOW_TRACKING_URI", "sqlite:///nowhere.db"),)),
    Mistake("seglab.report my-sweep", "mlflow.db", "Run where the sweep ran, or pass `--tracking-uri`.", store=None),
    Mistake("seglab.report my-sweep --tracking-uri sqlite:///notes.txt", "notes.txt", "Point it at the sweep's store."),
    Mistake("seglab.report my-sweep --format pdf", "--format", "Use text, markdown or csv."),
    Mistake(f"seglab.report {NO_RUN} --tracking-uri sqlite:///store.db", NO_RUN, "Name a sweep of this store.", store="store.db"),
    Mistake("seglab.report my-sweep --tracking-uri sqlite:///store.db --output photos", "--output=photos",
            "Give a file name, e.g. `--output photos/report.md`.", store="store.db"),
    Mistake("seglab.report my-sweep --tracking-uri sqlite:///store.db --output /proc/x/r.md", "--output=/proc/x/r.md",
            "Write it where you can write.", store="store.db"),
    Mistake("seglab.report my-sweep --tracking-uri sqlite:///store.db --output report.pdf", "--output=report.pdf",
            "Name the file .md, .csv or .txt (the format it is written in).", store="store.db"),
    Mistake("seglab.report my-sweep --tracking-uri sqlite:///store.db --sort speed", "--sort", "Sort by a column of the table.",
            store="store.db"),
    Mistake("seglab.bench bench.jit=false,true", "trainer.jit_compile", "Add `deterministic=false` to measure XLA."),
    Mistake("seglab.bench bench.steps=abc", "bench.steps", "Give an integer."),
    Mistake("seglab.bench bench.jit=maybe", "bench.jit", "Use true or false."),
    Mistake("seglab.bench bench.models=", "bench.models", "Name at least one model."),
    Mistake("seglab.bench bench.data=real", "bench.data", "Use synthetic or pipeline."),
    Mistake("seglab.bench steps=3", "bench.steps=3", "The benchmark's own options start with `bench.`."),
    Mistake("seglab.bench bench.out=photos", "bench.out=photos", "Give a file name, e.g. `bench.out=photos/bench.json`."),
    Mistake("seglab.bench bench.out=/proc/x/b.json", "bench.out=/proc/x/b.json", "Write it where you can write."),
]


def workdir(path: Path, mistake: Mistake | None = None) -> Path:
    """What the commands find in the current directory: a folder of photos, a text file, the row's store with its run
    (HELD_TRAINING's: Mistake.store), and what the row sets up."""
    (path / "photos").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path / "photos" / "cat.png")
    (path / "notes.txt").write_text("not a database\n")
    if mistake is not None and mistake.store is not None:
        hold_a_run(path, mistake.store)
    if mistake is not None and mistake.setup is not None:
        mistake.setup(path)
    return path


def user_env() -> dict[str, str]:
    env = {**inherited_env(), "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it: seglab quiets TensorFlow's C++ log (rows that read the data load it)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


# Forked from zygotes that have imported only what seglab's commands import before TensorFlow (Hydra, MLflow, seglab's
# command modules): each row is still a process of its own, and TensorFlow, where a row loads it, starts in it.
_ZYGOTES: "queue.Queue[Zygote]" = queue.Queue()
for _ in range(3):
    _ZYGOTES.put(Zygote(BEFORE_TENSORFLOW))


@atexit.register
def _close_zygotes() -> None:
    while not _ZYGOTES.empty():
        _ZYGOTES.get().close()


@dataclass
class Answer:
    done: subprocess.CompletedProcess
    wall_s: float  # from the request to the exit, three rows at a time on a shared machine
    cpu_s: float  # the command's own CPU seconds: what the time to answer is checked on (the load of others aside)
    before: dict  # store_dump of the row's store before the command ({} where the row has none)


def store_of(mistake: Mistake, cwd: Path) -> dict:
    return store_dump(cwd / mistake.store, cwd / "mlruns") if mistake.store is not None else {}


def answer(mistake: Mistake, cwd: Path) -> Answer:
    module, *args = shlex.split(mistake.command.replace("'", "\\'").replace(RUN_ID, held_run()[1]))
    env = {**user_env(), **dict(mistake.env)}
    before = store_of(mistake, cwd)
    zygote = _ZYGOTES.get()
    try:  # TensorFlow loads for a row that reads the data: minutes on a busy machine.
        started = time.perf_counter()
        done = zygote.run(module, args, cwd, env, 600 if mistake.reads_data else 120, env)
        return Answer(done, time.perf_counter() - started, zygote.last_cpu_s, before)
    finally:
        _ZYGOTES.put(zygote)


def doc_row(mistake: Mistake, line: str, cwd: Path) -> str:
    """The docs' row; paths inside the command's own (temporary) directory are written relative to it."""
    cell = line.replace(f"{cwd}/", "").replace(held_run()[1], RUN_ID).replace("|", "\\|")
    return f"| `{mistake.shown()}` | {cell} | {mistake.fix} |"


@pytest.fixture
def cwd(tmp_path):
    return workdir(tmp_path)


def answer_all(mistakes: list[Mistake], dirs: list[Path]) -> list[Answer]:
    """Every command run once, three at a time (each is a process of its own, in its own directory)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(answer, mistakes, dirs))


@pytest.fixture(scope="module")
def answers(tmp_path_factory, request):
    """The rows this session runs (all, or those `-k` selects), each answered once, three at a time."""
    chosen = {item.callspec.params["mistake"].shown() for item in request.session.items
              if hasattr(item, "callspec") and "mistake" in item.callspec.params}
    mistakes = [m for m in MISTAKES if m.shown() in chosen]
    dirs = [workdir(tmp_path_factory.mktemp("mistake"), m) for m in mistakes]
    return {m.shown(): (got, path) for m, got, path in zip(mistakes, answer_all(mistakes, dirs), dirs)}


# The CPU seconds a command may take to answer (its own, not the machine's, which others share): under 1 s before
# TensorFlow loads (the imports are the zygote's), 4-5 s where a row loads TensorFlow and reads the data (measured by
# `python -m tests.test_mistakes` on the 2-core AMD EPYC with AVX-512): bounds with room, not figures.
ANSWER_CPU_S = 10
READS_DATA_CPU_S = 60


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.shown().removeprefix("python -m ") for m in MISTAKES])
def test_mistake_is_one_line_and_leaves_the_store_as_it_was(mistake, answers):
    got, cwd = answers[mistake.shown()]
    answer_line = check_answer(mistake, got, cwd)
    row = doc_row(mistake, answer_line, cwd)
    assert row in DOC.read_text(), f"docs/troubleshooting.md is out of date: {row}"


def check_answer(mistake: Mistake, got: Answer, cwd: Path) -> str:
    """The row's answer as the table promises it; its one line."""
    done = got.done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and lines, done.stderr[-3000:]
    answer_line = lines[-1]
    assert answer_line.startswith(mistake.command.split()[0] + ":"), answer_line
    assert mistake.names in answer_line, answer_line
    budget = READS_DATA_CPU_S if mistake.reads_data else ANSWER_CPU_S
    assert got.cpu_s < budget, f"{got.cpu_s:.1f} s of CPU ({got.wall_s:.0f} s wall) to answer"
    assert len(lines) == 1, done.stderr[-3000:]
    for name in {"mlflow.db", "store.db"} - {mistake.store}:
        assert not (cwd / name).exists(), f"a refused command left a new store {name}"
    changes = dump_changes(got.before, store_of(mistake, cwd))
    assert not changes, "the refused command changed the store:\n" + "\n".join(changes)
    return answer_line


@pytest.mark.parametrize("mistake", [m for m in MISTAKES if m.command.startswith("seglab ") and "data.image_size" in m.names
                                     and "multiple" in m.fix], ids=lambda m: m.command)  # a size the model cannot divide
def test_the_image_size_suggested_is_accepted(mistake, answers):
    """A refused data.image_size comes with an example (`e.g. 64`): that size passes every check (segformer at 48 px
    was once told 32, then refused 32 as too small)."""
    got, _ = answers[mistake.shown()]
    suggested = re.search(r"\(e\.g\. (\S+)\)", got.done.stderr)
    assert suggested is not None, f"no size suggested: {got.done.stderr[-500:]}"
    overrides = [a for a in shlex.split(mistake.command)[1:] if not a.startswith("data.image_size=")]
    schema.compose([*overrides, f"data.image_size={suggested.group(1)}"])


def test_the_store_check_sees_a_changed_row_and_a_changed_artifact(tmp_path):
    """What the rows rely on: a copy of the held run's store dumps the same twice, and a tag set through MLflow or one
    byte of an artifact changed is a difference named by its table or file."""
    from mlflow import MlflowClient

    hold_a_run(tmp_path, "mlflow.db")
    before = store_dump(tmp_path / "mlflow.db", tmp_path / "mlruns")
    assert not dump_changes(before, store_dump(tmp_path / "mlflow.db", tmp_path / "mlruns"))
    assert any(key.startswith("artifact ") and key.endswith("model.keras") for key in before)
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").set_tag(held_run()[1], "note", "touched")
    config = next((tmp_path / "mlruns").glob("*/*/artifacts/config.yaml"))
    config.write_bytes(config.read_bytes()[:-1] + b"#")
    changes = dump_changes(before, store_dump(tmp_path / "mlflow.db", tmp_path / "mlruns"))
    assert [c.split(":")[0] for c in changes] == [f"artifact {config.relative_to(tmp_path / 'mlruns')}", "table tags"], changes


def test_full_error_shows_the_traceback(cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run([sys.executable, "-m", "seglab", "data.image_size=40"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" in done.stderr and "ConfigError" in done.stderr


HEADER = """# Troubleshooting: what seglab answers, and the fix

Every mistake below is answered with one line on stderr (`<command>: <what is wrong>`, naming the key
or file) and exit code 2, before TensorFlow loads unless said otherwise, and changes no record:
`tests/test_mistakes.py` runs each command in a directory that already holds a store with a finished
run (a one-epoch training's params, metrics, tags, masks, checkpoints and logged model; `RUN_ID` below
is its id) and checks that every table of the SQLite file and every file under `mlruns/` are byte for
byte as they were, and that the answer took under 10 s of the command's CPU (90 s where it reads the
data). `HYDRA_FULL_ERROR=1` shows the full traceback instead. Paths inside the directory the
command ran in are shown relative to it; a variable shown before `python -m` is one the user's shell had
set. `tests/test_mistakes.py` checks that this table is what each command prints; regenerate it with `python -m tests.test_mistakes > docs/troubleshooting.md`.

Mistakes found only once the data is read (with TensorFlow loaded, the rows below that name the
data) end the same way, before the MLflow run opens, so the store is left as it was: every mask of the
training and validation splits is counted, and a label that is neither a class nor
`data.ignore_index` is refused naming the largest one found (a bad trimap of `data.source.kind=folder`
names the trimap file); a split where no image decodes, and an annotations file that is not COCO's,
name the folder or file. A class configured but without a pixel in the training split is a warning
with the pixels of each class. A corrupt image among readable ones is skipped with a warning naming
it (`data=pets` folder source, `data=coco_cat` conversion, `seglab.predict`). A checkpoint that
cannot be written (disk full, no permission) ends the run `FAILED` with one line naming it, the
previous checkpoint intact; any file the operating system refuses is named with its reason.
`seglab.predict` reads 16-bit images scaled to 8 bits, palette, grey and CMYK images as RGB, and
drops an alpha channel (the colours as stored, as training reads an RGBA image).

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
    with tempfile.TemporaryDirectory() as tmp:
        documented = MISTAKES
        dirs = [workdir(Path(tmp) / str(i), m) for i, m in enumerate(documented)]
        rows = []
        for m, got, cwd in zip(documented, answer_all(documented, dirs), dirs):
            lines = [line for line in got.done.stderr.splitlines() if line.strip()]
            rows.append(doc_row(m, lines[-1] if lines else "(nothing)", cwd))
    sys.stdout.write(HEADER + "\n".join(rows) + "\n")

"""One file holds all training state (model variables, including the dropout layers' RNG state;
optimizer variables, including its iteration count that drives a learning-rate schedule; epoch,
best metric and its epoch), written atomically (`seglab.atomic`): a kill at any moment leaves either
the previous complete checkpoint or the new one.  The data pipeline needs no state: an epoch's
batches depend only on (seed, epoch) (seglab/data/pipeline.py).
"""

# Lazy imports: Keras loads where models are built or read, so the file names here are read without TensorFlow.

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seglab.errors import UserError
from seglab.models import inference_model
from seglab.util import atomic

if TYPE_CHECKING:  # Keras loads where a model is built or loaded: the file names below are read before TensorFlow loads
    import keras

# The files of a checkpoint directory (`trainer.checkpoint_dir`), and of its uploads to a run's artifacts.
STATE_FILE = "last.state.npz"  # the full training state (`save_state`)
BEST_FILE = "best.keras"  # the best epoch's model (`save_model`)
RUN_ID = "run_id"  # the state file's entry naming its run: who it belongs to, not what was learned


@dataclass
class TrainingState:
    epoch: int  # epochs completed
    best: float  # best value of the monitored metric so far
    best_epoch: int | None = None  # 0-based epoch of `best`
    run_id: str | None = None  # the MLflow run the state belongs to (None: written before states named it, or no run)


class ArchitectureMismatch(UserError, ValueError):
    """A checkpoint saved from another model (or optimizer) than the one it is loaded into."""

    resume_refused = True  # seglab.engine.owner: the run being continued keeps its status


def signature(model: keras.Model) -> list[list]:
    """Each model and optimizer variable's path and shape (the shapes must match for a state to load)."""
    return [[v.path, list(v.shape)] for v in [*model.variables, *model.optimizer.variables]]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be written (disk full, no permission); the previous one is intact."""


def _atomic_write(path: str | Path, write) -> None:
    """`atomic.write`, with a file-system error turned into one line that says what survived."""
    path = Path(path)
    try:
        atomic.write(path, write)
    except OSError as err:
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
        raise CheckpointError(
            f"cannot write the checkpoint {path} ({err.strerror or err}; disk full or no permission?); {kept}. "
            "Free space there or set trainer.checkpoint_dir to a directory with room."
        ) from err


def save_state(path: str | Path, model: keras.Model, state: TrainingState) -> None:
    arrays = {f"model/{i}": v.numpy() for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer/{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)})
    arrays["epoch"] = np.asarray(state.epoch)
    arrays["best"] = np.asarray(state.best)
    arrays["best_epoch"] = np.asarray(-1 if state.best_epoch is None else state.best_epoch)
    arrays["signature"] = np.asarray(json.dumps(signature(model)))
    if state.run_id is not None:
        arrays[RUN_ID] = np.asarray(state.run_id)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def saved_epoch(path: str | Path) -> int:
    """Epochs completed in a state file, without loading its arrays."""
    with np.load(path) as saved:
        return int(saved["epoch"])


def saved_run_id(path: str | Path) -> str | None:
    """The run a state file belongs to, without loading its arrays; None when it does not say
    (written before state files named their run)."""
    with np.load(path) as saved:
        return str(saved[RUN_ID]) if RUN_ID in saved.files else None


def load_state(path: str | Path, model: keras.Model) -> TrainingState:
    """Restore into a compiled model with the same architecture and optimizer; another architecture
    is refused (ArchitectureMismatch) before any variable is changed."""
    with np.load(path) as saved:
        _check_fits(path, saved, model)
        for i, v in enumerate(model.variables):
            v.assign(saved[f"model/{i}"])
        for i, v in enumerate(model.optimizer.variables):
            v.assign(saved[f"optimizer/{i}"])
        best_epoch = int(saved["best_epoch"]) if "best_epoch" in saved else -1
        run_id = str(saved[RUN_ID]) if RUN_ID in saved.files else None
        return TrainingState(epoch=int(saved["epoch"]), best=float(saved["best"]),
                             best_epoch=None if best_epoch < 0 else best_epoch, run_id=run_id)



def _check_fits(path, saved, model: keras.Model) -> None:
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    _check_signature(path, saved, model)


# Optimizer variables that only an option makes, as Keras names them (<variable>_<suffix>): a state saved with the
# option on does not load into an optimizer with it off, and the other way round.
OPTION_VARIABLES = {"_average": "optimizer.ema", "_gradient_accumulator": "trainer.gradient_accumulation_steps",
                    "_momentum": "optimizer.momentum"}


def _changed_option(found: list, expected: list) -> str | None:
    """Which option's variables one side has and the other not, said as a phrase; None for another model."""
    def suffixes(variables: list) -> set[str]:
        return {s for name, _ in variables for s in OPTION_VARIABLES if name.endswith(s)}

    saved, wanted = suffixes(found), suffixes(expected)
    changed = sorted(saved ^ wanted)
    if not changed:
        return None
    suffix = changed[0]
    has, lacks = ("the checkpoint", "this optimizer") if suffix in saved else ("this optimizer", "the checkpoint")
    return (f"was saved with {OPTION_VARIABLES[suffix]} set otherwise: {has} has the *{suffix} variables it makes, "
            f"{lacks} has none")


def _check_signature(path, saved, model: keras.Model) -> None:
    expected = signature(model)
    if "signature" in saved:
        found = json.loads(str(saved["signature"]))
    else:  # written before signatures were saved: shapes only
        names = sorted((k for k in saved.files if k.startswith(("model/", "optimizer/"))), key=lambda k: (k[0], int(k.split("/")[1])))
        found = [[k, list(saved[k].shape)] for k in names]
        expected = [[f"{'model' if i < len(model.variables) else 'optimizer'}/{i if i < len(model.variables) else i - len(model.variables)}", s]
                    for i, (_, s) in enumerate(expected)]
    # Shapes, not paths: Keras numbers layer names per process (conv2d_3), the same model may differ there.
    if [shape for _, shape in found] == [shape for _, shape in expected]:
        return
    # Adam -> SGD is another optimizer, not an option (Keras names the variables <optimizer>[_N]/..., N per process).
    optimizer = re.compile(rf"{re.escape(re.sub(r'_[0-9]+$', '', model.optimizer.name))}(_[0-9]+)?/")
    same_optimizer = any(optimizer.match(name) for name, _ in found)
    option = _changed_option(found, expected) if same_optimizer else None
    if option:
        raise ArchitectureMismatch(f"checkpoint {path} {option}: resume with the value the run was trained with (its params "
                                   "say it), or start a new run with trainer.resume=never.")
    first = next(((f, e) for f, e in zip(found, expected) if f[1] != e[1]), None)
    detail = (f"first difference: the checkpoint has {first[0][0]} {tuple(first[0][1])}, the model {first[1][0]} {tuple(first[1][1])}"
              if first else f"the checkpoint has {len(found)} variables, the model {len(expected)}")
    raise ArchitectureMismatch(
        f"checkpoint {path} was saved from another architecture than the configured model ({detail}). "
        "Resume it with the config it was trained with, or start a new run with trainer.resume=never."
    )


def load_model(path: str | Path) -> keras.Model:
    """A model written by `save_model` (plain Keras: no seglab classes inside)."""
    import keras

    return keras.models.load_model(path, compile=False)


def save_model(path: str | Path, model: keras.Model) -> None:
    """A `.keras` file (architecture + weights, no training state), written atomically."""
    _atomic_write(path, inference_model(model).save)

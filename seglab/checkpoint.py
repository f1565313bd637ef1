"""One file holds all training state (model variables, optimizer variables, epoch, best metric),
written atomically (`seglab.atomic`): a kill at any moment leaves the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from seglab import atomic
from seglab.errors import UserError


@dataclass
class TrainingState:
    epoch: int  # epochs completed
    best: float  # best value of the monitored metric so far


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

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def load_state(path: str | Path, model: keras.Model) -> TrainingState:
    """Restore into a compiled model with the same architecture and optimizer."""
    with np.load(path) as saved:
        for i, v in enumerate(model.variables):
            v.assign(saved[f"model/{i}"])
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        for i, v in enumerate(model.optimizer.variables):
            v.assign(saved[f"optimizer/{i}"])
        return TrainingState(epoch=int(saved["epoch"]), best=float(saved["best"]))


def inference_model(model: keras.Model) -> keras.Model:
    """The same layers and weights without the compiled loss, metrics and optimizer, so the saved
    file loads with plain Keras (no seglab classes needed) and takes raw [0, 1] RGB images."""
    return keras.Model(model.inputs, model.outputs, name=model.name)


def load_model(path: str | Path) -> keras.Model:
    """A model written by `save_model` (plain Keras: no seglab classes inside)."""
    return keras.models.load_model(path, compile=False)


def save_model(path: str | Path, model: keras.Model) -> None:
    """A `.keras` file (architecture + weights, no training state), written atomically."""
    _atomic_write(path, inference_model(model).save)

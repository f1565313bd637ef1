"""The trainer group's schema (conf/trainer/default.yaml): epochs, batches, precision, strategy, checkpoints."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from seglab.config.check import require

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")  # seglab/engine/distribute.py


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    precision: str = MISSING
    jit_compile: bool = MISSING
    steps_per_execution: int = MISSING
    strategy: str = MISSING
    mask_samples: int = MISSING  # validation images shown in the per-epoch mask grid
    worst_samples: int = MISSING  # the k worst images by mean IoU in the end-of-run (and evaluation) grid
    train_inference_images: int = MISSING  # training images scored in inference mode every epoch (0: off)
    checkpoint_dir: str = MISSING  # relative to the job's output directory
    limit_batches: Optional[int] = MISSING
    overfit_batches: Optional[int] = MISSING
    profile_batches: Optional[list[int]] = MISSING  # [first, last] training steps (from 1) to trace
    resume: str = MISSING  # auto | never | <MLflow run id> (docs/resume.md)
    checkpoint_every: int = MISSING  # epochs between uploads of the training state to the run's artifacts
    heartbeat_timeout_min: float = MISSING  # a RUNNING run on another host silent this long is taken as dead
    gradient_accumulation_steps: Optional[int] = MISSING  # batches per optimizer update (null or 1: every batch)
    early_stopping_patience: Optional[int] = MISSING  # epochs without improvement of optimize_metric (null: off)
    score_test: bool = MISSING  # the run's model also scored on the test split at the end, in the training run

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "trainer.epochs", self.epochs, "use an integer >= 1")
        require(self.resume in ("auto", "never") or re.fullmatch(r"[0-9a-f]{32}", self.resume) is not None,
                "trainer.resume", self.resume, "use auto, never or a 32-character MLflow run id")
        require(self.checkpoint_every >= 0, "trainer.checkpoint_every", self.checkpoint_every,
                "use an integer >= 0 (0: never upload during training, only at the end)")
        require(self.heartbeat_timeout_min > 0, "trainer.heartbeat_timeout_min", self.heartbeat_timeout_min,
                "use minutes > 0, longer than the longest epoch")
        require(self.batch_size >= 1, "trainer.batch_size", self.batch_size, "use an integer >= 1")
        require(self.precision in PRECISIONS, "trainer.precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        require(self.steps_per_execution >= 1, "trainer.steps_per_execution", self.steps_per_execution, "use an integer >= 1")
        require(self.strategy in STRATEGIES, "trainer.strategy", self.strategy, f"choose one of {', '.join(STRATEGIES)}")
        require(self.mask_samples >= 0, "trainer.mask_samples", self.mask_samples, "use an integer >= 0")
        require(self.worst_samples >= 0, "trainer.worst_samples", self.worst_samples, "use an integer >= 0 (0: no grid)")
        require(self.train_inference_images >= 0, "trainer.train_inference_images", self.train_inference_images,
                "use an integer >= 0 (0: off)")
        for key in ("limit_batches", "overfit_batches"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"trainer.{key}", value, "use null (all batches) or an integer >= 1")
        require(self.gradient_accumulation_steps is None or self.gradient_accumulation_steps >= 1,
                "trainer.gradient_accumulation_steps", self.gradient_accumulation_steps,
                "use null (an update every batch) or an integer >= 1 (k: one update per k batches)")
        require(self.early_stopping_patience is None or self.early_stopping_patience >= 1, "trainer.early_stopping_patience",
                self.early_stopping_patience, "use null (train all trainer.epochs) or an integer >= 1 (epochs)")
        steps = self.profile_batches
        require(steps is None or (len(steps) == 2 and 1 <= steps[0] <= steps[1]), "trainer.profile_batches", steps,
                "use null (no profile) or [first, last] training steps with 1 <= first <= last, e.g. [3,5]")


# The ConfigStore entries (GROUP/NAME) that the option YAMLs name in their defaults lists.
SCHEMAS = {
    "trainer/trainer_schema": TrainerConfig,
}


def batches_per_epoch(images: int, batch_size: int) -> int:
    """Batches an epoch of a split of `images` elements takes (the last one may be partial)."""
    return -(-images // batch_size)


def check_batches(trainer, images: int, where: str) -> None:
    """Batch size and overfit_batches against the training split's `images` (`where` says how it is known):
    from the config for the built-in data (schema.py), once counted for folders (engine/train.py)."""
    batch = trainer.batch_size
    require(batch <= images, "trainer.batch_size", batch,
            f"use at most {images}, the training split's size ({where}): a larger batch repeats nothing, it just shrinks")
    # overfit_batches repeats N batches: more than there are is meaningless. limit_batches is only a cap (+debug
    # presets set one for any data), so one above the split's batches is fine.
    batches = batches_per_epoch(images, batch)
    require(trainer.overfit_batches is None or trainer.overfit_batches <= batches, "trainer.overfit_batches",
            trainer.overfit_batches, f"use at most {batches}: the training split ({images} images, {where}) has {batches} "
            f"batches of trainer.batch_size={batch}")
    _check_updates(trainer, batches, f"{images} images, {where}")


def _check_updates(trainer, batches: int, split: str) -> None:
    """Keras counts accumulated batches across epochs and updates the weights once every k of them: a k larger
    than the run's batches (+debug limits included) never updates, and the untrained model would be logged."""
    accumulate = trainer.gradient_accumulation_steps or 1
    per_epoch = min(batches, trainer.overfit_batches or trainer.limit_batches or batches)  # as engine/debug.py reads
    total = per_epoch * trainer.epochs
    epochs = f"{trainer.epochs} epoch{'s' if trainer.epochs > 1 else ''} of {per_epoch} batch{'es' if per_epoch > 1 else ''}"
    require(accumulate <= total, "trainer.gradient_accumulation_steps", accumulate,
            f"the whole run has {total} training batches ({epochs}; the training split: {split}), so the optimizer "
            f"would never update the model; use at most {total}, or train more trainer.epochs")


"""Keras callbacks that connect `fit` to MLflow and to the checkpoint files."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from seglab import checkpoint, visualize


def mlflow_name(key: str) -> str:
    """Keras' log keys -> MLflow metric names: `val_*` stays, training metrics get `train_`."""
    return key if key.startswith("val_") else f"train_{key}"


class MetricsLogger(keras.callbacks.Callback):
    """Every epoch: train and validation metrics, epoch time and throughput, with step=epoch."""

    def __init__(self, run, train_images: int):
        super().__init__()
        self.run, self.train_images = run, train_images

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        metrics = {mlflow_name(k): float(v) for k, v in (logs or {}).items()}
        metrics["epoch_seconds"] = seconds
        metrics["train_images_per_second"] = self.train_images / seconds
        self.run.log_epoch(metrics, epoch)


class MaskLogger(keras.callbacks.Callback):
    """Every epoch: a grid of fixed validation images with true and predicted masks."""

    def __init__(self, run, images: np.ndarray, masks: np.ndarray):
        super().__init__()
        self.run, self.images, self.masks = run, images, masks

    def on_epoch_end(self, epoch, logs=None):
        logits = self.model(self.images, training=False)
        pred = np.argmax(np.asarray(logits), axis=-1)
        self.run.log_masks(visualize.mask_grid(self.images, self.masks, pred), epoch)


class Checkpointer(keras.callbacks.Callback):
    """Every epoch the full training state to `last.state.npz`; the best model (by `monitor`)
    to `best.keras`.  Both files are replaced atomically."""

    def __init__(self, directory: str | Path, monitor: str):
        super().__init__()
        self.directory = Path(directory)
        self.monitor = monitor
        self.maximize = not monitor.endswith("loss")
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.directory / "last.state.npz"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.keras"

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"optimize_metric={self.monitor!r} is not among the epoch's metrics {sorted(logs or {})}")
        value = float(value)
        if self.best_epoch is None or (value > self.best if self.maximize else value < self.best):
            self.best, self.best_epoch = value, epoch
            checkpoint.save_model(self.best_path, self.model)
        checkpoint.save_state(self.last_path, self.model, checkpoint.TrainingState(epoch=epoch + 1, best=self.best))

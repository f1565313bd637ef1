"""Keras callbacks that connect `fit` to MLflow and to the checkpoint files; `for_training`: the
list a training run fits with, built from the config."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from seglab import metrics
from seglab.engine import checkpoint
from seglab.util import objective, visualize
from seglab.util.signals import raise_if_swallowed

log = logging.getLogger(__name__)


def for_training(cfg, run, checkpointer: "Checkpointer", train_images: int, loss, inference_batches=None,
                 samples: tuple[np.ndarray, np.ndarray] | None = None, profile_dir: Path | None = None,
                 first_epoch: int = 0) -> list[keras.callbacks.Callback]:
    """The callbacks of a training run's `fit`, in the order Keras calls them: trainer.train_inference_images
    (0: none) scores `inference_batches`, trainer.mask_samples (0: none) draws the first of `samples` every
    epoch, trainer.profile_batches (null: none) profiles into `profile_dir`; optimizer.ema swaps the moving
    averages in (a run resumed at `first_epoch` > 0 starts with them in), trainer.early_stopping_patience stops."""
    trainer = cfg.trainer
    # Keras hands every callback the same epoch logs, in list order: InferenceModeScores comes before
    # MetricsLogger because it adds train_inference_* to those logs, which MetricsLogger then logs.
    # EMAWeights comes before every callback that scores, logs or saves the model: they see the EMA weights.
    ema = [EMAWeights(resumed=first_epoch > 0)] if cfg.optimizer.ema else []
    scores = [InferenceModeScores(inference_batches, cfg.data.num_classes, loss)] if trainer.train_inference_images else []
    masks = [MaskLogger(run, *samples, list(cfg.data.class_names))] if trainer.mask_samples else []
    profiler = [Profiler(*trainer.profile_batches, profile_dir)] if trainer.profile_batches else []
    # After the checkpointer, whose best epoch it reads.
    stopper = ([EarlyStopping(checkpointer, trainer.early_stopping_patience, ema[0] if ema else None)]
               if trainer.early_stopping_patience else [])
    return [
        # A NaN or infinite loss raises, so the run ends FAILED with the error instead of training on garbage.
        keras.callbacks.TerminateOnNaN(raise_error=True),
        StopOnSignal(),
        *ema,
        *scores,
        MetricsLogger(run, train_images),
        checkpointer,
        *stopper,
        EpochLine(trainer.epochs, checkpointer),
        Heartbeat(run),
        *masks,
        *profiler,
    ]


class EMAWeights(keras.callbacks.SwapEMAWeights):
    """optimizer.ema: Keras' swap of the model's weights with the optimizer's exponential moving averages
    (Polyak averaging) around validation and from each epoch's end to the next one's start, so validation,
    the callbacks after this one (scores, logs, checkpoints, masks) and, through the optimizer's
    `finalize_variable_values` after the last epoch, the finished model hold the EMA weights, while the
    training steps update the raw ones.

    A state saved at an epoch's end therefore holds the EMA weights in the model and the raw ones in the
    optimizer's averages.  `resumed`: the model was restored from such a state, so the next epoch's start
    swaps them back exactly as it would have without the interruption (bit-identical resume)."""

    def __init__(self, resumed: bool = False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed

    def finalize(self) -> None:
        """Training ends after this epoch although it is not the last (early stopping): the averages take
        the EMA weights now in the model, so that Keras' `finalize_variable_values` after fit keeps them."""
        if self._ema_weights_in_model:
            self._finalize_ema_values()


class EarlyStopping(keras.callbacks.Callback):
    """trainer.early_stopping_patience: stop after `patience` epochs in a row without improvement of the
    checkpointer's monitored metric (optimize_metric).  The count is the epochs since the checkpointer's
    best epoch, which a resumed run restores, so a resumed run stops where an uninterrupted one would.
    `stopped_epoch`: the 0-based epoch after which it stopped (None: it did not)."""

    def __init__(self, checkpointer: Checkpointer, patience: int, ema: EMAWeights | None = None):
        super().__init__()
        self.checkpointer, self.patience, self.ema = checkpointer, patience, ema
        self.stopped_epoch: int | None = None

    def exhausted(self, epoch: int) -> bool:
        """Whether the patience has run out after 0-based `epoch`."""
        best = self.checkpointer.best_epoch
        return best is not None and epoch - best >= self.patience

    def on_epoch_end(self, epoch, logs=None):
        if self.exhausted(epoch) and epoch < self.params["epochs"] - 1:
            self.model.stop_training = True
            self.stopped_epoch = epoch
            if self.ema is not None:
                self.ema.finalize()
            log.info("early stopping after epoch %d: %s has not improved on epoch %d's %.4f in %d epoch(s) "
                     "(trainer.early_stopping_patience=%d)", epoch + 1, self.checkpointer.monitor,
                     self.checkpointer.best_epoch + 1, self.checkpointer.best, epoch - self.checkpointer.best_epoch, self.patience)


def mlflow_name(key: str) -> str:
    """Keras' log keys -> MLflow metric names: `val_*` stays, training metrics get `train_`."""
    return key if key.startswith("val_") else f"train_{key}"


class MetricsLogger(keras.callbacks.Callback):
    """Every epoch (MLflow step = 0-based epoch): train and validation metrics, the learning rate of
    the epoch's first step, the seconds of the whole epoch and of its training part, and training
    throughput (validation excluded)."""

    def __init__(self, run, train_images: int):
        super().__init__()
        self.run, self.train_images = run, train_images
        self._train_seconds: float | None = None
        self._learning_rate: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_seconds = None
        # The optimizer evaluates its schedule at its current step: the first step of this epoch.
        self._learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_test_begin(self, logs=None):
        # fit passes its callbacks to the validation pass too: the training part ends here.
        if self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        train_seconds = self._train_seconds if self._train_seconds is not None else seconds
        metrics = {mlflow_name(k): float(v) for k, v in (logs or {}).items()}
        metrics["epoch_seconds"] = seconds
        metrics["train_seconds"] = train_seconds
        metrics["train_images_per_second"] = self.train_images / train_seconds
        metrics["learning_rate"] = self._learning_rate
        self.run.log_epoch(metrics, epoch)


class InferenceModeScores(keras.callbacks.Callback):
    """Every epoch: the scores of fixed, unaugmented training images in inference mode, added to the
    epoch's logs as `inference_*` (MetricsLogger logs them as `train_inference_*`).

    `train_*` are measured in training mode (batch statistics, dropout) on augmented batches while
    the weights change; these use the model as it predicts after the epoch (moving statistics, no
    dropout).  Both near each other: the model predicts as it trains.  `train_inference_*` far below
    `train_*`, with validation as low: batch norm's moving statistics lag behind the weights (lower
    model.bn_momentum)."""

    def __init__(self, batches, num_classes: int, loss):
        super().__init__()
        self.batches, self.num_classes, self.loss = batches, num_classes, loss

    def on_epoch_end(self, epoch, logs=None):
        cm, loss = metrics.split_confusion_matrix(self.model, self.batches, self.num_classes, self.loss)
        found = metrics.scores(cm)
        if logs is not None:
            logs.update({f"inference_{name}": found[name] for name in ("pixel_accuracy", "mean_iou", "mean_dice")})
            logs["inference_loss"] = loss


class MaskLogger(keras.callbacks.Callback):
    """Every epoch: fixed validation images with their true and predicted masks, in class colours
    with a legend of `class_names` (seglab.util.visualize.labelled_masks)."""

    def __init__(self, run, images: np.ndarray, masks: np.ndarray, class_names: list[str]):
        super().__init__()
        self.run, self.images, self.masks, self.class_names = run, images, masks, class_names

    def on_epoch_end(self, epoch, logs=None):
        logits = np.asarray(self.model(self.images, training=False))
        picture = visualize.labelled_masks(self.images, self.masks, np.argmax(logits, axis=-1), self.class_names)
        self.run.log_masks(picture, epoch)


class Checkpointer(keras.callbacks.Callback):
    """Every epoch the full training state to `checkpoint.STATE_FILE`; the best model (by `monitor`)
    to `checkpoint.BEST_FILE`.  Both files are replaced atomically.  Every `upload_every` epochs (0: never)
    both are handed to `upload(files, epochs_completed)` (the run's artifacts, for a resume on
    another machine).  The state names `run_id`, the run the directory belongs to (issue 21: another
    run refuses to write into it or resume from it, seglab.engine.lifecycle.refuse_other_owner)."""

    def __init__(self, directory: str | Path, monitor: str, upload=None, upload_every: int = 0, run_id: str | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.monitor = monitor
        self.maximize = not objective.minimized(monitor)
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch: int | None = None  # 0-based, as Keras' callbacks and MLflow's steps count
        self.upload, self.upload_every = upload, upload_every
        self.run_id = run_id

    def restore(self, state: checkpoint.TrainingState) -> None:
        """Continue from a loaded checkpoint: its best so far stays the one to beat."""
        self.best, self.best_epoch = state.best, state.best_epoch

    @property
    def last_path(self) -> Path:
        return self.directory / checkpoint.STATE_FILE

    @property
    def best_path(self) -> Path:
        return self.directory / checkpoint.BEST_FILE

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"optimize_metric={self.monitor!r} is not among the epoch's metrics {sorted(logs or {})}")
        value = float(value)
        if self.best_epoch is None or (value > self.best if self.maximize else value < self.best):
            self.best, self.best_epoch = value, epoch
            checkpoint.save_model(self.best_path, self.model)
        state = checkpoint.TrainingState(epoch + 1, self.best, self.best_epoch, self.run_id)
        checkpoint.save_state(self.last_path, self.model, state)
        if self.upload is not None and self.upload_every and (epoch + 1) % self.upload_every == 0:
            self.upload([self.last_path, self.best_path], epoch + 1)


class EpochLine(keras.callbacks.Callback):
    """What a person reads while training: on a terminal a progress bar over the epoch's batches,
    then one short line per epoch (loss, val mIoU, val Dice, seconds, best so far).  Per-class
    values go to MLflow only.  The best so far is the checkpointer's, so both always agree."""

    BAR_WIDTH = 30

    def __init__(self, epochs: int, checkpointer: Checkpointer, stream=None):
        super().__init__()
        self.epochs, self.checkpointer = epochs, checkpointer
        self.stream = stream or sys.stdout
        self.bar = self.stream.isatty()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps")
        if not self.bar or not steps:
            return
        done = round(self.BAR_WIDTH * (batch + 1) / steps)
        loss = (logs or {}).get("loss")
        loss_text = f"  loss {float(loss):.4f}" if loss is not None else ""
        self.stream.write(f"\r{self._prefix()}  [{'#' * done}{'.' * (self.BAR_WIDTH - done)}] {batch + 1}/{steps}{loss_text}")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self._start
        if self.bar:
            self.stream.write("\r\033[K")  # clear the bar; the epoch's line replaces it
            self.stream.flush()
        best = self.checkpointer
        log.info(
            "%s  loss %.4f  val mIoU %.4f  val Dice %.4f  %.1f s  best %s %.4f (epoch %d)",
            self._prefix(), logs.get("loss", math.nan), logs.get("val_mean_iou", math.nan), logs.get("val_mean_dice", math.nan),
            seconds, best.monitor, best.best, best.best_epoch + 1,
        )

    def _prefix(self) -> str:
        width = len(str(self.epochs))
        return f"epoch {self._epoch + 1:>{width}}/{self.epochs}"


class Profiler(keras.callbacks.Callback):
    """TensorFlow's profiler over training steps `first`..`last` (counted from 1 over the whole fit),
    its trace written under `directory` (TensorBoard's Profile tab reads it).  `seconds_per_step`:
    the profiled steps' mean wall time, as the profiler saw them."""

    def __init__(self, first: int, last: int, directory: Path):
        super().__init__()
        self.first, self.last, self.directory = first, last, Path(directory)
        self.step = 0
        self.started_at: float | None = None
        self.seconds_per_step: float | None = None
        self.steps = 0

    def on_train_batch_begin(self, batch, logs=None):

        self.step += 1
        if self.step == self.first:
            tf.profiler.experimental.start(str(self.directory))
            self.started_at = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.started_at is not None and self.step >= self.last:
            self._stop()

    def on_train_end(self, logs=None):
        if self.started_at is not None:  # fewer steps than `last`: the trace holds those that ran
            self._stop()

    def _stop(self) -> None:

        self.steps = self.step - self.first + 1
        self.seconds_per_step = (time.perf_counter() - self.started_at) / self.steps
        self.started_at = None
        tf.profiler.experimental.stop()


class Heartbeat(keras.callbacks.Callback):
    """A sign of life on the run every epoch, so no other command takes it for a dead one."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        self.run.heartbeat()


class StopOnSignal(keras.callbacks.Callback):
    """A SIGTERM or Ctrl-C whose exception Python swallowed (raised in a `__del__` or a weakref callback) still
    stops training, at the next batch (seglab.util.signals.raise_if_swallowed)."""

    def on_train_batch_end(self, batch, logs=None):
        raise_if_swallowed()

    def on_test_batch_end(self, batch, logs=None):
        raise_if_swallowed()

"""callbacks.for_training: the config says which callbacks a training run fits with, and their order
brings InferenceModeScores' scores into the epoch's logs before MetricsLogger logs them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TINY


class Recorder:
    """A run that keeps what the callbacks hand it (the verbs they call)."""

    def __init__(self):
        self.epochs: dict[int, dict] = {}
        self.masks: list[int] = []

    def log_epoch(self, metrics, epoch):
        self.epochs[epoch] = dict(metrics)

    def log_masks(self, image, epoch):
        self.masks.append(epoch)

    def heartbeat(self):
        pass


@pytest.mark.slow
def test_inference_scores_reach_the_logger(compose_cfg, tmp_path):
    import tensorflow as tf
    from hydra.utils import instantiate

    from seglab.engine import callbacks, train

    cfg = compose_cfg(*TINY, "trainer.train_inference_images=4", "trainer.mask_samples=2")
    model = instantiate(cfg.model, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size)
    loss = instantiate(cfg.loss, num_classes=cfg.data.num_classes)
    train.compile_model(cfg, model, loss, steps_per_epoch=1)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4, 32, 32, 3)).astype(np.float32)
    masks = rng.integers(0, cfg.data.num_classes, size=(4, 32, 32)).astype(np.int32)
    batches = tf.data.Dataset.from_tensors((images, masks))
    run, checkpointer = Recorder(), callbacks.Checkpointer(tmp_path, monitor=cfg.optimize_metric)

    found = callbacks.for_training(cfg, run, checkpointer, len(images), loss, batches, (images[:2], masks[:2]), tmp_path)
    model.fit(batches, validation_data=batches, epochs=1, callbacks=found, verbose=0)
    assert {"train_inference_mean_iou", "train_inference_loss", "train_loss", "val_mean_iou"} <= set(run.epochs[0])
    assert run.masks == [0]


def test_the_config_says_which_callbacks_a_training_run_gets_and_in_which_order(compose_cfg, tmp_path):
    from seglab.engine import callbacks

    run, checkpointer = Recorder(), callbacks.Checkpointer(tmp_path, monitor="val_mean_iou")
    samples = (np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 32, 32), np.int32))

    def names(*overrides):
        found = callbacks.for_training(compose_cfg(*TINY, *overrides), run, checkpointer, 4, None, None, samples, tmp_path)
        return [type(c).__name__ for c in found]

    plain = ["TerminateOnNaN", "StopOnSignal", "MetricsLogger", "Checkpointer", "EpochLine", "Heartbeat"]
    assert names("trainer.train_inference_images=0", "trainer.mask_samples=0") == plain
    assert names("trainer.train_inference_images=4", "trainer.mask_samples=1", "trainer.profile_batches=[1,2]") == [
        *plain[:2], "InferenceModeScores", *plain[2:], "MaskLogger", "Profiler"]
    # EMA weights in before anything scores, logs or saves; early stopping reads the checkpointer's best epoch.
    assert names("trainer.train_inference_images=0", "trainer.mask_samples=0", "optimizer.ema=true",
                 "trainer.early_stopping_patience=3") == [
        *plain[:2], "EMAWeights", "MetricsLogger", "Checkpointer", "EarlyStopping", "EpochLine", "Heartbeat"]


@pytest.mark.parametrize("sig, exc", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")])
def test_a_signal_whose_exception_python_swallowed_is_not_reported_and_still_stops_training_at_the_next_batch(sig, exc):
    """A handler raises wherever Python happens to be; in a `__del__` or a weakref callback Python hands the
    exception to `sys.unraisablehook`, which prints "Exception ignored in ..." and a traceback, and goes on:
    once in CI training then ran to its end, and once that traceback came before seglab's one line. Neither now:
    the hook is not bothered with it, and the next batch stops."""
    import os
    import signal
    import sys

    from seglab.engine import callbacks
    from seglab.util import signals

    class Dying:
        def __del__(self):
            os.kill(os.getpid(), getattr(signal, sig))  # the handler runs here, its exception is Python's to report

    class Broken:
        def __del__(self):
            raise ValueError("reported")

    reported = []
    previous_hook, sys.unraisablehook = sys.unraisablehook, reported.append  # Python's own prints to stderr
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a console; catch() leaves an ignored one
    restore = signals.catch()
    try:
        Dying()
        assert reported == []
        stop = KeyboardInterrupt if exc == "KeyboardInterrupt" else signals.Terminated
        with pytest.raises(stop):
            callbacks.StopOnSignal().on_train_batch_end(0)
        if stop is KeyboardInterrupt:  # raised once; a SIGTERM stops every batch until the run ends
            callbacks.StopOnSignal().on_train_batch_end(1)
        Broken()  # anything else is reported as before
        assert [r.exc_type for r in reported] == [ValueError]
    finally:
        restore()
        signal.signal(signal.SIGINT, previous_int)
        assert sys.unraisablehook == reported.append
        sys.unraisablehook = previous_hook
    callbacks.StopOnSignal().on_train_batch_end(2)  # the next run in the process is not stopped

"""optimizer.ema, trainer.gradient_accumulation_steps and trainer.early_stopping_patience have their effect
in a real tiny fit (the config's optimizer, callbacks and checkpointer); their resume is in tests/test_resume.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TINY

QUIET = ("trainer.train_inference_images=0", "trainer.mask_samples=0")


def tiny_batches(count: int, size: int = 4, seed: int = 0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(count * size, 32, 32, 3)).astype(np.float32)
    masks = rng.integers(0, 3, size=(count * size, 32, 32)).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, masks)).batch(size), images, masks


class Run:
    """What the callbacks log to, kept (the verbs they call)."""

    def __init__(self):
        self.epochs: dict[int, dict] = {}

    def log_epoch(self, metrics, epoch):
        self.epochs[epoch] = dict(metrics)

    def heartbeat(self):
        pass


def compiled(cfg, steps_per_epoch: int):
    from hydra.utils import instantiate

    from seglab.engine import train

    model = instantiate(cfg.model, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size)
    loss = instantiate(cfg.loss, num_classes=cfg.data.num_classes)
    train.compile_model(cfg, model, loss, steps_per_epoch=steps_per_epoch)
    return model, loss


def weights(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.trainable_variables]


@pytest.mark.slow
def test_ema_weights_are_what_is_validated_checkpointed_and_left_in_the_model(compose_cfg, tmp_path):
    """The raw weights after every step give the EMA in NumPy (Keras' rule: the average starts at the
    first step's weights, then a <- m a + (1 - m) w); at each epoch's end the model, the validation loss
    and the best checkpoint hold that average, not the raw weights, and after fit the model keeps it."""
    import keras

    from seglab.engine import callbacks, checkpoint

    momentum = 0.8
    cfg = compose_cfg(*TINY, *QUIET, "optimizer.ema=true", f"optimizer.ema_momentum={momentum}", "optimize_metric=val_loss")
    batches, _, _ = tiny_batches(3)
    model, loss = compiled(cfg, steps_per_epoch=3)
    checkpointer = callbacks.Checkpointer(tmp_path, monitor="val_loss")

    class Recorder(keras.callbacks.Callback):
        raw, at_epoch_end, val_loss = [], [], []

        def on_train_batch_end(self, batch, logs=None):
            self.raw.append(weights(self.model))

        def on_epoch_end(self, epoch, logs=None):
            self.at_epoch_end.append(weights(self.model))
            self.val_loss.append(self.model.evaluate(batches, verbose=0, return_dict=True)["loss"])

    found = callbacks.for_training(cfg, Run(), checkpointer, 12, loss, None, None, tmp_path)
    assert [type(c).__name__ for c in found][:3] == ["TerminateOnNaN", "StopOnSignal", "EMAWeights"]
    history = model.fit(batches, validation_data=batches, epochs=2, callbacks=[*found, Recorder()], verbose=0)

    average = [w.astype(np.float64) for w in Recorder.raw[0]]
    expected = []
    for step, raw in enumerate(Recorder.raw[1:], start=2):
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, raw)]
        if step % 3 == 0:
            expected.append(average)
    for epoch in range(2):
        for got, want, raw in zip(Recorder.at_epoch_end[epoch], expected[epoch], Recorder.raw[3 * epoch + 2]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert max(np.abs(g - r).max() for g, r in zip(Recorder.at_epoch_end[epoch], Recorder.raw[3 * epoch + 2])) > 1e-4
        # fit's validation ran on the weights the model holds at the epoch's end: the EMA weights
        assert history.history["val_loss"][epoch] == pytest.approx(Recorder.val_loss[epoch], rel=1e-5)
    best = checkpoint.load_model(checkpointer.best_path)
    for got, want in zip(weights(best), Recorder.at_epoch_end[checkpointer.best_epoch]):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(weights(model), Recorder.at_epoch_end[-1]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_gradient_accumulation_updates_the_weights_every_k_batches_as_one_batch_k_times_larger(compose_cfg):
    """With k=3 the weights change after batches 3 and 6 only and the optimizer counts 2 updates; with
    plain SGD and a model without batch statistics or dropout, two accumulated batches of 4 give the
    update of one batch of 8."""
    import keras
    import tensorflow as tf

    plain = (*TINY, "optimizer=sgd", "optimizer.momentum=0.0", "optimizer.weight_decay=null", "scheduler=constant",
             "model.batch_norm=false", "model.dropout=0.0")
    cfg = compose_cfg(*plain, "trainer.gradient_accumulation_steps=3")
    batches, images, masks = tiny_batches(6)
    model, _ = compiled(cfg, steps_per_epoch=6)
    start = weights(model)

    class Recorder(keras.callbacks.Callback):
        changed, iterations = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self.before = weights(self.model)

        def on_train_batch_end(self, batch, logs=None):
            self.changed.append(any(not np.array_equal(a, b) for a, b in zip(self.before, weights(self.model))))
            self.iterations.append(int(self.model.optimizer.iterations.numpy()))

    model.fit(batches, epochs=1, callbacks=[Recorder()], verbose=0)
    assert Recorder.changed == [False, False, True, False, False, True]
    assert Recorder.iterations == [0, 0, 1, 1, 1, 2]

    two = compose_cfg(*plain, "trainer.gradient_accumulation_steps=2")
    accumulated, _ = compiled(two, steps_per_epoch=2)
    one = compose_cfg(*plain)
    large, _ = compiled(one, steps_per_epoch=1)
    for m in (accumulated, large):
        for v, w in zip(m.trainable_variables, start):
            v.assign(w)
    accumulated.fit(batches.take(2), epochs=1, verbose=0)
    large.fit(tf.data.Dataset.from_tensors((images[:8], masks[:8])), epochs=1, verbose=0)
    assert int(accumulated.optimizer.iterations.numpy()) == int(large.optimizer.iterations.numpy()) == 1
    for a, b, s in zip(weights(accumulated), weights(large), start):
        assert not np.array_equal(a, s)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_early_stopping_stops_after_patience_epochs_without_improvement(compose_cfg, tmp_path):
    """Validation on pixels that are all ignore_index: val_loss is 0 every epoch and never improves on
    epoch 0's, so with patience 2 training stops after epoch 2 (0-based) of 6, while the weights do train;
    with EMA the model ends with the EMA weights of that epoch, not the raw ones."""
    import keras
    import tensorflow as tf

    from seglab.engine import callbacks

    cfg = compose_cfg(*TINY, *QUIET, "data.ignore_index=255", "optimize_metric=val_loss",
                      "trainer.early_stopping_patience=2", "optimizer.ema=true", "optimizer.ema_momentum=0.5")
    batches, images, masks = tiny_batches(2)
    unlabelled = tf.data.Dataset.from_tensor_slices((images, np.full_like(masks, 255))).batch(4)
    model, loss = compiled(cfg, steps_per_epoch=2)
    checkpointer = callbacks.Checkpointer(tmp_path, monitor=cfg.optimize_metric)
    found = callbacks.for_training(cfg, Run(), checkpointer, 8, loss, None, None, tmp_path)
    stopper = next(c for c in found if isinstance(c, callbacks.EarlyStopping))

    class Recorder(keras.callbacks.Callback):
        raw, held = None, None

        def on_train_batch_end(self, batch, logs=None):
            Recorder.raw = weights(self.model)

        def on_epoch_end(self, epoch, logs=None):
            Recorder.held = weights(self.model)

    history = model.fit(batches, validation_data=unlabelled, epochs=6, callbacks=[*found, Recorder()], verbose=0)
    assert history.history["val_loss"] == [0.0, 0.0, 0.0]
    assert stopper.stopped_epoch == 2 and checkpointer.best_epoch == 0
    assert max(np.abs(r - h).max() for r, h in zip(Recorder.raw, Recorder.held)) > 1e-4  # EMA != raw
    for got, want in zip(weights(model), Recorder.held):  # not the raw weights Keras' finalize would put back
        np.testing.assert_array_equal(got, want)

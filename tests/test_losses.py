"""Losses against an independent NumPy implementation."""

import numpy as np
import pytest
import tensorflow as tf

from seglab.losses import CrossEntropy


def numpy_ce(labels, logits):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def test_cross_entropy_equals_numpy_mean_over_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 4, 5))
    loss = CrossEntropy(num_classes=3)(labels, logits)
    assert float(loss) == pytest.approx(numpy_ce(labels, logits).mean(), rel=1e-5)


def test_ignored_pixels_change_neither_loss_nor_gradient():
    rng = np.random.default_rng(1)
    logits = tf.Variable(rng.normal(size=(1, 4, 4, 3)).astype(np.float32))
    labels = rng.integers(0, 3, size=(1, 4, 4))
    ignored = labels.copy()
    ignored[0, :2] = 255
    loss_fn = CrossEntropy(num_classes=3, ignore_index=255)
    with tf.GradientTape() as tape:
        loss = loss_fn(ignored, logits)
    grad = tape.gradient(loss, logits).numpy()
    assert float(loss) == pytest.approx(numpy_ce(labels[0, 2:], logits.numpy()[0, 2:]).mean(), rel=1e-5)
    assert np.all(grad[0, :2] == 0) and np.all(np.isfinite(grad)) and np.abs(grad[0, 2:]).sum() > 0


def test_float16_logits_are_computed_in_float32():
    logits = np.full((1, 2, 2, 2), 30000.0, np.float16)
    loss = CrossEntropy(num_classes=2)(np.zeros((1, 2, 2), np.int32), logits)
    assert loss.dtype == tf.float32 and float(loss) == pytest.approx(np.log(2), rel=1e-3)

"""Losses on integer label maps `(B, H, W)` and logits `(B, H, W, C)`, computed in float32."""

from __future__ import annotations

import keras
import tensorflow as tf


class CrossEntropy(keras.losses.Loss):
    """Sparse categorical cross-entropy from logits, averaged over the labelled pixels.

    Pixels whose label equals `ignore_index` contribute nothing to the loss or its gradient.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, name: str = "cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def call(self, y_true, y_pred):
        labels = tf.cast(y_true, tf.int32)
        logits = tf.cast(y_pred, tf.float32)
        if self.ignore_index is None:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        valid = tf.not_equal(labels, self.ignore_index)
        labels = tf.where(valid, labels, tf.zeros_like(labels))
        per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        valid = tf.cast(valid, tf.float32)
        # Rescale so that Keras' mean over all pixels equals the mean over the labelled ones.
        scale = tf.cast(tf.size(valid), tf.float32) / tf.maximum(tf.reduce_sum(valid), 1.0)
        return per_pixel * valid * scale

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index}

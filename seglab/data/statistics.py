"""Label statistics of a split, counted before training (e.g. for class-balancing weights)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass
class ClassCounts:
    pixels: np.ndarray  # (C,) int64: pixels labelled c
    image_pixels: np.ndarray  # (C,) int64: labelled pixels of the images that contain c


def class_counts(batches: tf.data.Dataset, num_classes: int) -> ClassCounts:
    """Count the label pixels of `(image, mask)` batches with one-hot sums (deterministic on every
    device, no bincount).  Labels outside [0, num_classes) (an ignore index) are not counted."""
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for _, masks in batches:
        onehot = tf.one_hot(tf.cast(masks, tf.int32), num_classes, dtype=tf.float32)
        per_image = tf.cast(tf.reduce_sum(onehot, axis=[1, 2]), tf.int64).numpy()  # (B, C), exact below 2**24 px
        labelled = per_image.sum(1, keepdims=True)
        pixels += per_image.sum(0)
        image_pixels += np.where(per_image > 0, labelled, 0).sum(0)
    return ClassCounts(pixels, image_pixels)

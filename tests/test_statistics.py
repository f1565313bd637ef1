"""Label counts of a split against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from seglab.data import DataError
from seglab.data.statistics import absent_classes, class_counts, refuse_outside


def test_class_counts_match_numpy_and_skip_ignored_pixels():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, size=(5, 6, 6))
    masks[1] = 0  # classes 1 and 2 absent from this image
    masks[2, :3] = 255  # ignored pixels count nowhere, not even as the image's size
    images = np.zeros((5, 6, 6, 3), np.float32)
    counts = class_counts(tf.data.Dataset.from_tensor_slices((images, masks)).batch(2), 4)
    labelled = [(m < 4).sum() for m in masks]
    np.testing.assert_array_equal(counts.pixels, [(masks == c).sum() for c in range(4)])
    np.testing.assert_array_equal(
        counts.image_pixels, [sum(n for m, n in zip(masks, labelled) if (m == c).any()) for c in range(4)]
    )
    assert counts.pixels[3] == 0 and counts.image_pixels[3] == 0


def test_labels_outside_the_classes_are_counted_and_refused_but_the_ignore_index_is_not():
    masks = np.zeros((3, 4, 4), np.int32)
    masks[0, 0, :2] = 2  # two pixels of a class data.num_classes=2 does not have
    masks[1, 1] = 255  # unlabelled
    masks[2, 2, 0] = 5
    batches = tf.data.Dataset.from_tensor_slices((np.zeros((3, 4, 4, 3), np.float32), masks)).batch(2)
    counts = class_counts(batches, 2, ignore_index=255)
    assert counts.outside == {2: 2, 5: 1} and counts.images == 3
    with pytest.raises(DataError, match=r"labels up to 5 \(2: 2 px, 5: 1 px\), but data.num_classes=2 .*data.num_classes=6"):
        refuse_outside(counts, 2, 255, "train")
    assert counts.first_outside == 0 and class_counts(batches.skip(1), 2, ignore_index=255).first_outside == 0
    with pytest.raises(DataError, match=r"^the val split's masks \(first in c\.png\) hold labels up to 5 \(5: 1 px\)"):
        refuse_outside(class_counts(batches.unbatch().skip(1).batch(2), 2, 255), 2, 255, "val", names=["b.png", "c.png"])
    with pytest.raises(DataError, match=r"^the train split's masks \(in a\.npy, b\.npy, \.\.\.\) hold labels"):
        refuse_outside(counts, 2, 255, "train", files=["a.npy", "b.npy", "c.npy"])
    assert class_counts(batches, 6, ignore_index=255).outside == {}
    refuse_outside(class_counts(batches, 6, ignore_index=255), 6, 255, "train")


def test_a_class_without_training_pixels_is_a_warning_with_the_counts():
    masks = np.zeros((2, 4, 4), np.int32)
    masks[1, :2] = 1
    counts = class_counts(tf.data.Dataset.from_tensor_slices((np.zeros((2, 4, 4, 3)), masks)).batch(2), 3)
    warning = absent_classes(counts, ["pet", "background", "border"])
    assert "class 2 (border) has no pixel in the 2 training images" in warning
    assert "pet 24, background 8, border 0" in warning
    masks[0, 0, 0] = 2
    assert absent_classes(class_counts(tf.data.Dataset.from_tensor_slices((np.zeros((2, 4, 4, 3)), masks)).batch(2), 3),
                          ["pet", "background", "border"]) is None

"""Label counts of a split against NumPy."""

import numpy as np
import tensorflow as tf

from seglab.data.statistics import class_counts


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

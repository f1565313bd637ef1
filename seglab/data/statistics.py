"""Label statistics of a split, counted before training: the check that the masks fit
`data.num_classes` (every pixel, not a sample) and the counts class-balancing weights are computed from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from seglab.data import DataError


@dataclass
class ClassCounts:
    pixels: np.ndarray  # (C,) int64: pixels labelled c
    image_pixels: np.ndarray  # (C,) int64: labelled pixels of the images that contain c
    images: int = 0
    outside: dict = field(default_factory=dict)  # label -> pixels, for labels that are neither a class nor the ignore index
    first_outside: Optional[int] = None  # the place in the split of the first example holding such a label


def class_counts(batches: tf.data.Dataset, num_classes: int, ignore_index: Optional[int] = None) -> ClassCounts:
    """Count the label pixels of `(image, mask)` batches with one-hot sums (deterministic on every
    device, no bincount).  Labels outside [0, num_classes) are not counted as classes; those that are
    not `ignore_index` either are counted in `outside`."""
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    images, outside, first_outside = 0, {}, None
    for _, masks in batches:
        masks = tf.cast(masks, tf.int32)
        onehot = tf.one_hot(masks, num_classes, dtype=tf.float32)
        per_image = tf.cast(tf.reduce_sum(onehot, axis=[1, 2]), tf.int64).numpy()  # (B, C), exact below 2**24 px
        labelled = per_image.sum(1, keepdims=True)
        pixels += per_image.sum(0)
        image_pixels += np.where(per_image > 0, labelled, 0).sum(0)
        labels = masks.numpy()
        bad = ((labels < 0) | (labels >= num_classes)) & (labels != (-1 if ignore_index is None else ignore_index))
        if first_outside is None and bad.any():
            first_outside = images + int(np.flatnonzero(bad.reshape(len(labels), -1).any(1))[0])
        images += per_image.shape[0]
        for label, n in zip(*np.unique(labels[bad], return_counts=True)):
            outside[int(label)] = outside.get(int(label), 0) + int(n)
    return ClassCounts(pixels, image_pixels, images, outside, first_outside)


def refuse_outside(counts: ClassCounts, num_classes: int, ignore_index: Optional[int], split: str,
                   names: Optional[Sequence[str]] = None, files: Optional[Sequence[str]] = None) -> None:
    """DataError naming the largest label found when a mask holds one that is neither a class nor
    `data.ignore_index`, and where: the first example's name among `names` (the split's, in the order counted), else
    the split's `files`.  The loss and the confusion matrix would silently leave those pixels out."""
    if not counts.outside:
        return
    whose = f"the {split} split's masks"
    if names and counts.first_outside is not None and counts.first_outside < len(names):
        whose += f" (first in {names[counts.first_outside]})"
    elif files:
        whose += f" (in {', '.join(map(str, files[:2]))}{', ...' if len(files) > 2 else ''})"
    largest = max(counts.outside)
    found = ", ".join(f"{label}: {n} px" for label, n in sorted(counts.outside.items())[:5])
    fix = (f"set data.num_classes={largest + 1} (with {largest + 1} data.class_names)" if largest >= num_classes
           else "fix the masks")
    ignore = f", or data.ignore_index={largest} if those pixels are unlabelled" if ignore_index is None and len(counts.outside) == 1 else ""
    raise DataError(
        f"{whose} hold labels up to {largest} ({found}), but data.num_classes={num_classes} allows "
        f"0..{num_classes - 1}" + (f" and data.ignore_index={ignore_index}" if ignore_index is not None else "")
        + f": {fix}{ignore}."
    )


def absent_classes(counts: ClassCounts, class_names: Sequence[str]) -> Optional[str]:
    """A warning when a configured class has no pixel in the split (it cannot be learnt, and its IoU
    means nothing), with every class's count; None when all occur."""
    absent = [f"{c} ({name})" for c, name in enumerate(class_names) if counts.pixels[c] == 0]
    if not absent:
        return None
    per_class = ", ".join(f"{name} {n}" for name, n in zip(class_names, counts.pixels.tolist()))
    return (f"data.num_classes={len(class_names)}, but class {', '.join(absent)} has no pixel in the {counts.images} "
            f"training images (pixels per class: {per_class}); check data.num_classes and the masks")

"""A trained model applied to images of any size: the one preprocessing that `python -m seglab.predict`
(seglab/cli/predict.py), the served model (seglab/tracking/served.py) and `seglab.evaluate`
(seglab/engine/evaluate.py) share, so all answer the same masks for the same image.

Two modes (`inference.mode`, checked in seglab/config/inference.py):
- `resize`: the whole image resized to the model's input (bilinear, as in training), the label map
  back to the image's size (nearest);
- `slide`: windows of the model's input size moved over the image at full resolution with
  `inference.stride` (the last window of a row or column flush with the image's edge), each pixel's
  logits the uniform average over the windows that cover it, as MMSegmentation's `slide` mode; for
  images larger than the training size, whose details resizing would blur.  An image smaller than a
  window is zero-padded to one (the padding is cut off again).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from seglab.data.pipeline import resize_image, to_unit_range  # the training pipeline's own preprocessing

WINDOW_BATCH = 8  # windows per forward pass: a large image must not need all of its windows in memory at once


def preprocess(images: list[np.ndarray], size: int):
    """uint8 RGB images (H, W, 3) of any sizes -> one float32 batch (N, size, size, 3) in [0, 1], as in training."""
    return tf.stack([to_unit_range(resize_image(im, size)) for im in images])


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one side of `length` (>= window): every `stride`, the last flush with the end."""
    count = max(math.ceil((length - window) / stride), 0) + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def slide_logits(model, image: np.ndarray, stride: int) -> np.ndarray:
    """float32 (H, W, C) logits of one float32 image (H, W, 3) in [0, 1]: the uniform average over the windows
    covering each pixel."""
    window = int(model.input_shape[1])
    height, width = image.shape[:2]
    padded = np.zeros((max(height, window), max(width, window), 3), np.float32)
    padded[:height, :width] = image
    rows, columns = (window_starts(side, window, stride) for side in padded.shape[:2])
    corners = [(y, x) for y in rows for x in columns]
    total = np.zeros((*padded.shape[:2], int(model.output_shape[-1])), np.float32)
    count = np.zeros((*padded.shape[:2], 1), np.float32)
    for start in range(0, len(corners), WINDOW_BATCH):
        chunk = corners[start : start + WINDOW_BATCH]
        tiles = np.stack([padded[y : y + window, x : x + window] for y, x in chunk])
        # A tensor, not the array: a model loaded from a .keras file warns of an input structure mismatch for an array.
        logits = np.asarray(model(tf.constant(tiles), training=False), np.float32)
        for (y, x), tile in zip(chunk, logits):
            total[y : y + window, x : x + window] += tile
            count[y : y + window, x : x + window] += 1.0
    return (total / count)[:height, :width]


def batch_logits(model, batch, mode: str = "resize", stride: int | None = None, flip: bool = False):
    """float32 logits (N, H, W, C) of a float32 batch (N, H, W, 3) in [0, 1]: at the model's size for `resize`
    (the batch must be at it), at the batch's own for `slide`; with `flip`, averaged with the logits of the
    horizontally flipped images, flipped back (test-time augmentation)."""
    def once(images):
        if mode == "slide":
            return tf.stack([slide_logits(model, np.asarray(im, np.float32), stride) for im in images])
        return tf.cast(model(images, training=False), tf.float32)

    logits = once(batch)
    if flip:
        logits = (logits + tf.reverse(once(tf.reverse(batch, [2])), [2])) / 2
    return logits


def _logits(model, images: list[np.ndarray], mode: str, stride: int | None, flip: bool) -> list:
    """float32 logits (H, W, C) per uint8 image at the model's size (resize) or the image's own (slide)."""
    if mode == "slide":
        return [batch_logits(model, to_unit_range(im)[None], mode, stride, flip)[0] for im in images]
    return list(batch_logits(model, preprocess(images, model.input_shape[1]), mode, stride, flip))


def segment(model, images: list[np.ndarray], scores: bool = False, mode: str = "resize", stride: int | None = None,
            flip: bool = False):
    """Label maps (H, W) at each image's own size; with `scores`, also each image's per-class softmax
    probabilities (H, W, C) at its own size.  `stride`: of `slide` mode's windows, in pixels; `flip`: average
    with the horizontally flipped image's logits."""
    logits = _logits(model, images, mode, stride, flip)
    if mode == "slide":
        masks = [np.asarray(lg).argmax(-1).astype(np.uint8) for lg in logits]
        return (masks, [tf.nn.softmax(lg, axis=-1).numpy() for lg in logits]) if scores else masks
    labels = [tf.argmax(lg, axis=-1, output_type=tf.int32)[..., None] for lg in logits]
    masks = [
        tf.image.resize(lab, im.shape[:2], method="nearest")[..., 0].numpy().astype(np.uint8)
        for lab, im in zip(labels, images)
    ]
    if not scores:
        return masks
    probabilities = [tf.nn.softmax(lg, axis=-1) for lg in logits]
    return masks, [tf.image.resize(p, im.shape[:2], method="bilinear").numpy() for p, im in zip(probabilities, images)]

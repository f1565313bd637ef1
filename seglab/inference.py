"""A trained model applied to images of any size: the one preprocessing that `python -m seglab.predict`
(seglab/cli/predict.py), the served model (seglab/tracking/served.py) and `seglab.evaluate`
(seglab/engine/evaluate.py) share, so all answer the same masks for the same image.

Two modes (`inference.mode`, checked in seglab/config/inference.py):
- `resize`: the whole image brought to the model's input (H, W) as the model was trained (its `data.resize`):
  stretched (bilinear, as in training), fitted inside and padded with zeros (the padding's logits cut off), or
  scaled to cover (H, W) and read in windows of (H, W) (crop: trained on windows, it sees the full image in
  windows); the label map back to the image's size (nearest);
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

from seglab.data.pipeline import resize_image, scaled_size, to_unit_range  # the training pipeline's own preprocessing

WINDOW_BATCH = 8  # windows per forward pass: a large image must not need all of its windows in memory at once


def model_size(model) -> tuple[int, int]:
    """(height, width) of the images a model takes."""
    return int(model.input_shape[1]), int(model.input_shape[2])


def preprocess(images: list[np.ndarray], size):
    """uint8 RGB images (H, W, 3) of any sizes -> one float32 batch (N, h, w, 3) in [0, 1] at `size` (one side or
    (h, w)), as in training."""
    return tf.stack([to_unit_range(resize_image(im, size)) for im in images])


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one side of `length` (>= window): every `stride`, the last flush with the end."""
    count = max(math.ceil((length - window) / stride), 0) + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def slide_logits(model, image: np.ndarray, stride: int) -> np.ndarray:
    """float32 (H, W, C) logits of one float32 image (H, W, 3) in [0, 1]: the uniform average over the windows
    covering each pixel."""
    window = model_size(model)
    height, width = image.shape[:2]
    padded = np.zeros((max(height, window[0]), max(width, window[1]), 3), np.float32)
    padded[:height, :width] = image
    rows, columns = (window_starts(side, win, stride) for side, win in zip(padded.shape[:2], window))
    corners = [(y, x) for y in rows for x in columns]
    total = np.zeros((*padded.shape[:2], int(model.output_shape[-1])), np.float32)
    count = np.zeros((*padded.shape[:2], 1), np.float32)
    for start in range(0, len(corners), WINDOW_BATCH):
        chunk = corners[start : start + WINDOW_BATCH]
        tiles = np.stack([padded[y : y + window[0], x : x + window[1]] for y, x in chunk])
        # A tensor, not the array: a model loaded from a .keras file warns of an input structure mismatch for an array.
        logits = np.asarray(model(tf.constant(tiles), training=False), np.float32)
        for (y, x), tile in zip(chunk, logits):
            total[y : y + window[0], x : x + window[1]] += tile
            count[y : y + window[0], x : x + window[1]] += 1.0
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


def _logits(model, images: list[np.ndarray], mode: str, stride: int | None, flip: bool, resize: str) -> list:
    """float32 logits (h, w, C) per uint8 image, of the image's content at some scale (the caller resizes them
    to the image's size): slide at the image's own size; resize as the model was trained (`resize`, its
    data.resize): stretched to the model's size, fitted inside it (the padding cut off again), or, for crop,
    scaled to cover the model's size and read in windows of it."""
    size = model_size(model)
    if mode == "slide":
        return [batch_logits(model, to_unit_range(im)[None], mode, stride, flip)[0] for im in images]
    if resize == "crop":
        stride = stride or max(min(size) // 2, 1)
        covered = [resize_image(im, scaled_size(im.shape, size, cover=True)) for im in images]
        return [batch_logits(model, to_unit_range(im)[None], "slide", stride, flip)[0] for im in covered]
    if resize == "fit":
        return [_fitted_logits(model, im, size, flip) for im in images]
    return list(batch_logits(model, preprocess(images, size), mode, stride, flip))


def _fitted_logits(model, image: np.ndarray, size: tuple[int, int], flip: bool):
    """data.resize=fit: the image scaled to fit inside the model's size and centred on zeros, as in training;
    the logits of the image's part."""
    inner = [int(side) for side in scaled_size(image.shape, size, cover=False)]
    top, left = (size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2
    canvas = tf.image.pad_to_bounding_box(to_unit_range(resize_image(image, inner)), top, left, *size)
    logits = batch_logits(model, canvas[None], "resize", None, flip)[0]
    return logits[top : top + inner[0], left : left + inner[1]]


def segment(model, images: list[np.ndarray], scores: bool = False, mode: str = "resize", stride: int | None = None,
            flip: bool = False, resize: str = "stretch"):
    """Label maps (H, W) at each image's own size (uint8; uint16 past 256 classes); with `scores`, also each image's
    per-class softmax probabilities (H, W, C) at its own size.  `stride`: of the sliding windows, in pixels; `flip`:
    average with the horizontally flipped image's logits; `resize`: the model's data.resize (stretch, fit, crop), how
    `resize` mode brings an image to the model's size."""
    logits = _logits(model, images, mode, stride, flip, resize)
    labels = [tf.argmax(lg, axis=-1, output_type=tf.int32)[..., None] for lg in logits]
    dtype = np.uint8 if not logits or logits[0].shape[-1] <= 256 else np.uint16  # a 16-bit PNG past 256 classes
    masks = [_at(lab, im.shape[:2], "nearest")[..., 0].numpy().astype(dtype) for lab, im in zip(labels, images)]
    if not scores:
        return masks
    probabilities = [tf.nn.softmax(lg, axis=-1) for lg in logits]
    return masks, [_at(p, im.shape[:2], "bilinear").numpy() for p, im in zip(probabilities, images)]


def _at(values, shape: tuple[int, int], method: str):
    """`values` (h, w, k) at the image's `shape`; as they are when already at it."""
    values = tf.convert_to_tensor(values)
    if tuple(values.shape[:2]) == tuple(shape):
        return values
    return tf.image.resize(values, shape, method=method)

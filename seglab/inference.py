"""A trained model applied to images of any size: the one preprocessing that `python -m seglab.predict`
(seglab/cli/predict.py) and the served model (seglab/tracking/served.py) share, so both answer the
same masks for the same image."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from seglab.data.pipeline import resize_image, to_unit_range  # the training pipeline's own preprocessing


def preprocess(images: list[np.ndarray], size: int):
    """uint8 RGB images (H, W, 3) of any sizes -> one float32 batch (N, size, size, 3) in [0, 1], as in training."""
    return tf.stack([to_unit_range(resize_image(im, size)) for im in images])


def segment(model, images: list[np.ndarray], scores: bool = False):
    """Label maps (H, W) at each image's own size, from one batched forward pass; with `scores`,
    also each image's per-class softmax probabilities (H, W, C) at its own size (bilinear)."""
    logits = model(preprocess(images, model.input_shape[1]), training=False)
    labels = tf.argmax(logits, axis=-1, output_type=tf.int32)[..., None]
    masks = [
        tf.image.resize(lab, im.shape[:2], method="nearest")[..., 0].numpy().astype(np.uint8)
        for lab, im in zip(labels, images)
    ]
    if not scores:
        return masks
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    return masks, [tf.image.resize(p, im.shape[:2], method="bilinear").numpy() for p, im in zip(probabilities, images)]

"""The TensorFlow image-segmentation tutorial's model (tensorflow.org/tutorials/images/segmentation):
a U-Net-shaped decoder of pix2pix upsample blocks on a MobileNetV2 encoder (Sandler et al., CVPR 2018).

One addition to the tutorial: MobileNetV2's own preprocessing ([0, 1] -> [-1, 1]) runs inside the
graph, so the ImageNet features see the inputs they were trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import layers

from seglab.config.data import size_of
from seglab.models import encoders, facts

# Encoder feature maps at strides 2, 4, 8, 16 (skips) and 32 (decoder input), as in the tutorial.
SKIPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "block_16_project")
DECODER_FILTERS = (512, 256, 128, 64)


def imagenet_file(alpha: float, image_size: int | tuple[int, int]) -> str:
    """Keras' file for this width and size (the 224 one for other sizes and non-square ones, as keras.applications does)."""
    height, width = size_of(image_size)
    rows = height if height == width and height in facts.MOBILENET_V2_IMAGENET_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def upsample_block(x, filters: int, dropout: float, bn_momentum: float, name: str):
    """pix2pix `upsample`: 3x3 transposed conv, stride 2, N(0, 0.02) init -> batch norm -> [dropout] -> ReLU."""
    x = layers.Conv2DTranspose(
        filters, 3, strides=2, padding="same", use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02), name=f"{name}_upconv",
    )(x)
    x = encoders.batch_norm(bn_momentum, f"{name}_bn")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def mobilenet_v2_encoder(
    size: tuple[int, int], alpha: float, weights: str | None, trainable: bool, bn_momentum: float, freeze_batch_norm: bool
) -> keras.Model:
    """MobileNetV2 up to block_16_project, (H, W, 3) in [-1, 1] -> the five SKIPS feature maps.
    Its batch norm layers get `bn_momentum`, or, with pretrained weights and `freeze_batch_norm`, keep
    their ImageNet statistics (encoders.set_batch_norm says why)."""
    mobilenet = keras.applications.MobileNetV2(
        input_shape=(*size, 3), alpha=alpha, include_top=False, weights=None
    )
    what = f"MobileNetV2 (alpha={alpha})"
    encoders.load(mobilenet, encoders.weights_file(weights, imagenet_file(alpha, size), "mobilenet_v2", what), what)
    encoders.set_batch_norm(mobilenet, bn_momentum, frozen=freeze_batch_norm and weights is not None)
    encoder = keras.Model(mobilenet.input, [mobilenet.get_layer(name).output for name in SKIPS], name="mobilenet_v2")
    encoder.trainable = trainable  # frozen: no gradients, and batch norm uses its ImageNet statistics
    return encoder


def build(
    num_classes: int,
    image_size: int | tuple[int, int],
    alpha: float,
    dropout: float,
    bn_momentum: float,
    encoder: Mapping[str, Any],
) -> keras.Model:
    """The values come from conf/model/unet_mobilenet.yaml (defaults) and seglab/config/model.py (ranges)."""
    weights, trainable = encoders.options(encoder)
    size = size_of(image_size)
    inputs = keras.Input((*size, 3), name="image")
    mobilenet = mobilenet_v2_encoder(size, alpha, weights, trainable, bn_momentum, bool(encoder["freeze_batch_norm"]))
    *skips, x = mobilenet(encoders.mobilenet_v2_preprocessing(inputs))
    for level, (filters, skip) in enumerate(zip(DECODER_FILTERS, reversed(skips))):
        x = upsample_block(x, filters, dropout, bn_momentum, f"up{level}")
        x = layers.Concatenate(name=f"up{level}_concat")([x, skip])
    logits = layers.Conv2DTranspose(num_classes, 3, strides=2, padding="same", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="unet_mobilenet")

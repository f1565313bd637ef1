"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), with `same` padding so output size = input size."""

from __future__ import annotations

import keras
from keras import layers

from seglab.config.data import size_of
from seglab.models import encoders, facts


def conv_block(x, filters: int, batch_norm: bool, bn_momentum: float, name: str):
    """Two 3x3 convolutions + ReLU, He-normal initialised (paper, section 3); optionally batch norm
    (Ioffe & Szegedy 2015) after each convolution, which the paper predates."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", use_bias=not batch_norm, name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = encoders.batch_norm(bn_momentum, f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build(
    num_classes: int,
    image_size: int | tuple[int, int],
    base_filters: int,
    depth: int,
    dropout: float,
    batch_norm: bool,
    bn_momentum: float,
) -> keras.Model:
    """`depth` 2x2 max-pool steps; level l has base_filters * 2**l channels (64 ... 1024 in the paper);
    `image_size`: one side or (height, width).  The values come from conf/model/unet.yaml (defaults) and
    seglab/config/model.py (ranges)."""
    inputs = keras.Input((*size_of(image_size), 3), name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, batch_norm, bn_momentum, f"down{level}")
        if dropout and level == depth - 1:  # "drop-out layers at the end of the contracting path"
            x = layers.Dropout(dropout, name=f"down{level}_dropout")(x)
        skips.append(x)
        x = layers.MaxPooling2D(facts.UNET_POOL, name=f"down{level}_pool")(x)
    x = conv_block(x, base_filters * 2**depth, batch_norm, bn_momentum, "bottom")
    if dropout:
        x = layers.Dropout(dropout, name="bottom_dropout")(x)
    for level in reversed(range(depth)):
        # 2x2 up-convolution halving the channels, then concatenation with the same-level features.
        x = layers.Conv2DTranspose(
            base_filters * 2**level, facts.UNET_POOL, strides=facts.UNET_POOL, kernel_initializer="he_normal", name=f"up{level}_upconv"
        )(x)
        x = layers.Concatenate(name=f"up{level}_concat")([skips[level], x])
        x = conv_block(x, base_filters * 2**level, batch_norm, bn_momentum, f"up{level}")
    logits = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="unet")

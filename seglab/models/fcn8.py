"""FCN-8s (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015) on a VGG16 encoder, with the paper's 32s and 16s variants one setting away.

Differences from the paper, all forced by Keras or the CPU: `same` padding replaces the
paper's 100-pixel input padding and crops, so the input side must be a multiple of 32; Keras'
`include_top=False` ImageNet file has no fc layers, so fc6/fc7 start random; their width is
configurable (the paper's 4096 is one setting away).

From scratch (`encoder.weights=null`, the only FCN an offline user can train) the trunk has a batch norm
after each convolution (as torchvision's vgg16_bn; Keras has no such application, so the ImageNet path
keeps Keras' plain VGG16).  The paper starts from ImageNet weights; a plain 13-conv trunk from random
weights under Adam's default 3e-3 blew up (loss 57503 in the quick start's first epoch) and predicted
only background.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import layers

from seglab.config.data import size_of
from seglab.models import encoders, facts

VGG16_IMAGENET_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
ENCODER_OUTPUTS = ("block3_pool", "block4_pool", "block5_pool")  # strides 8, 16, 32
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # Simonyan & Zisserman, table 1, D
SCRATCH_BN_MOMENTUM = 0.9  # as the U-Net's bn_momentum (conf/model/unet.yaml): short runs need fast-following statistics


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """A Conv2DTranspose kernel (size, size, out, in) that upsamples each channel bilinearly
    (FCN's `upsample_filt`; channels do not mix)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    rows, cols = np.ogrid[:size, :size]
    filt = (1 - abs(rows - center) / factor) * (1 - abs(cols - center) / factor)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    kernel[:, :, range(channels), range(channels)] = filt[..., None]
    return kernel


def upsample(x, channels: int, factor: int, name: str, dtype: str | None = None):
    """Learned `factor`x upsampling: a transposed convolution with kernel 2*factor, initialised to
    bilinear interpolation (paper, section 3.3)."""
    layer = layers.Conv2DTranspose(channels, 2 * factor, strides=factor, padding="same", use_bias=False, name=name, dtype=dtype)
    y = layer(x)
    layer.kernel.assign(bilinear_kernel(2 * factor, channels))
    return y


def score(x, num_classes: int, name: str):
    """1x1 class scoring layer, zero-initialised as in the paper (section 4.2)."""
    return layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=name)(x)


def vgg16_bn_trunk(size: tuple[int, int]) -> keras.Model:
    """VGG16's convolutional part with batch norm after every convolution (Ioffe & Szegedy 2015, as
    torchvision's vgg16_bn), for training from scratch: (H, W, 3) -> pool3, pool4, pool5."""
    inputs = keras.Input((*size, 3))
    x, pools = inputs, []
    for block, widths in enumerate(VGG16_BLOCKS, start=1):
        for conv, width in enumerate(widths, start=1):
            # He et al. 2015's initialisation, for ReLU
            x = layers.Conv2D(width, 3, padding="same", kernel_initializer="he_normal", name=f"block{block}_conv{conv}")(x)
            x = encoders.batch_norm(SCRATCH_BN_MOMENTUM, f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
        pools.append(x)
    return keras.Model(inputs, pools[2:], name="vgg16")


def vgg16_encoder(size: tuple[int, int], weights: str | None, trainable: bool) -> keras.Model:
    """VGG16's convolutional part, (H, W, 3) caffe-preprocessed -> pool3, pool4, pool5."""
    if weights is None:
        return vgg16_bn_trunk(size)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(*size, 3))
    encoders.load(vgg, encoders.weights_file(weights, VGG16_IMAGENET_FILE, "vgg16", "VGG16"), "VGG16")
    encoder = keras.Model(vgg.input, [vgg.get_layer(name).output for name in ENCODER_OUTPUTS], name="vgg16")
    encoder.trainable = trainable  # frozen: no gradients reach it
    return encoder


def build(
    num_classes: int,
    image_size: int | tuple[int, int],
    variant: str,
    fc_width: int,
    dropout: float,
    encoder: Mapping[str, Any],
) -> keras.Model:
    """The values come from conf/model/fcn8.yaml (defaults), seglab/config/model.py (ranges) and
    seglab/models/facts.py (the variants)."""
    weights, trainable = encoders.options(encoder)
    size = size_of(image_size)
    inputs = keras.Input((*size, 3), name="image")
    pool3, pool4, pool5 = vgg16_encoder(size, weights, trainable)(encoders.vgg16_preprocessing(inputs))

    # fc6 and fc7 of VGG16 as convolutions ("convolutionalization", section 3.1), with dropout.
    x = layers.Conv2D(fc_width, 7, padding="same", activation="relu", name="fc6")(pool5)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Conv2D(fc_width, 1, activation="relu", name="fc7")(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    x = score(x, num_classes, "score_fr")

    # Section 4.2: 2x upsample the stride-32 scores and add the pool4 scores (16s), then again with pool3 (8s).
    stride = facts.FCN_VARIANTS[variant]
    if stride <= 16:  # pool4 is at stride 16, pool3 at 8 (ENCODER_OUTPUTS)
        x = upsample(x, num_classes, 2, "upscore2")
        x = layers.Add(name="fuse_pool4")([x, score(pool4, num_classes, "score_pool4")])
    if stride <= 8:
        x = upsample(x, num_classes, 2, "upscore_pool4")
        x = layers.Add(name="fuse_pool3")([x, score(pool3, num_classes, "score_pool3")])
    logits = upsample(x, num_classes, stride, f"upscore{stride}", dtype="float32")
    return keras.Model(inputs, logits, name=f"fcn{variant}")

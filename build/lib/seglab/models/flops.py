"""Forward FLOPs of a Keras model, counted layer by layer from its graph.

FLOPs = 2 x multiply-accumulates of the convolution and dense layers (the usual convention, as in
the MobileNet and ResNet papers' "mult-adds" x 2); biases, batch norm, activations, additions and
pooling are left out (well under 1 % for these models).
"""

from __future__ import annotations

import math

import keras
from keras import layers


def layers_of(model: keras.Model):
    """Every layer, descending into nested models (e.g. a pretrained encoder)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from layers_of(layer)
        else:
            yield layer


def multiply_accumulates(layer) -> int:
    """MACs of one call of `layer` on one example (batch dimension excluded)."""
    if isinstance(layer, layers.DepthwiseConv2D):
        _, h, w, _ = layer.output.shape
        _, _, channels_in, _ = layer.kernel.shape
        return h * w * math.prod(layer.kernel_size) * channels_in * layer.depth_multiplier
    if isinstance(layer, layers.Conv2DTranspose):
        # Every input pixel is spread over a k x k x C_out window: the MACs of the strided
        # convolution it transposes.
        _, h, w, channels_in = layer.input.shape
        return h * w * math.prod(layer.kernel_size) * channels_in * layer.filters
    if isinstance(layer, layers.Conv2D):
        _, h, w, _ = layer.output.shape
        channels_in = layer.input.shape[-1]
        return h * w * math.prod(layer.kernel_size) * channels_in // layer.groups * layer.filters
    if isinstance(layer, layers.Dense):
        return math.prod(layer.input.shape[1:]) * layer.units
    return 0


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass on one image."""
    return 2 * sum(multiply_accumulates(layer) for layer in layers_of(model))

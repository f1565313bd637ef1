"""DeepLabV3+ (Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", ECCV 2018) on a ResNet encoder (He et al. 2016),
built from KerasHub's `ResNetBackbone` and `DeepLabV3Backbone`.

As in the paper (section 3.1, figure 2): atrous spatial pyramid pooling (rates 6, 12, 18, plus a
1x1 branch and image pooling) on the deepest features, upsampled bilinearly to the stride-4 features,
whose 1x1 projection to 48 channels is concatenated, then bilinearly upsampled to the input.
Difference, forced by KerasHub: its ResNet has no atrous last stage, so the pyramid pools the
stride-32 features (output stride 32, not the paper's 16) and is upsampled 8x, not 4x; the decoder
has KerasHub's single 1x1 convolution of 256 channels where the paper has two 3x3 ones.

A rate at least the side of the pooled features (image_size / 32: 2 at 64 px, 4 at 128) puts every
tap of its 3x3 branch but the centre in the zero padding, for every position: the branch is then the
same function (and gradient) at any such rate, and it is built at the side (`pyramid_rates`), because
TensorFlow's CPU atrous convolution pads the features to the rate: at 64 px, ResNet-50's training step
took ~10x longer with 6/12/18 than with 2/2/2.  The paper's rates act as atrous ones from 224 px (7).
"""

from __future__ import annotations

import keras
import keras_hub
from keras import layers

from seglab.config.data import size_of
from seglab.models import facts, hub

# The pyramid pools the encoder's P5 features (stride 2**5) and the decoder takes its P2 ones (stride 4).
ASPP_LEVEL, DECODER_LEVEL = 5, 2


def resnet_encoder(depth: int, size: tuple[int, int], preset: str | None) -> keras.Model:
    """KerasHub's ResNet (v1) of `depth` layers, random or from `preset` (a ResNet preset of that depth)."""
    if preset is not None:
        return hub.encoder_from_preset(preset, size, f"ResNet-{depth}")
    blocks, block_type = facts.RESNET_DEPTHS[depth]
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=list(facts.RESNET_FILTERS),
        stackwise_num_blocks=list(blocks), stackwise_num_strides=[1, 2, 2, 2], block_type=block_type,
        image_shape=(*size, 3), name=f"resnet{depth}",
    )


def build(
    num_classes: int,
    image_size: int | tuple[int, int],
    depth: int,
    dilation_rates: list[int],
    projection_filters: int,
    preset: str | None,
) -> keras.Model:
    """The values come from conf/model/deeplabv3plus.yaml (defaults), seglab/config/model.py (ranges) and
    seglab/models/facts.py (the ResNet depths)."""
    size = size_of(image_size)
    inputs = keras.Input((*size, 3), name="image")
    encoder = resnet_encoder(depth, size, preset)
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        spatial_pyramid_pooling_key=f"P{ASPP_LEVEL}",
        upsampling_size=2 ** (ASPP_LEVEL - DECODER_LEVEL),
        dilation_rates=pyramid_rates(dilation_rates, max(encoder.pyramid_outputs[f"P{ASPP_LEVEL}"].shape[1:3])),
        low_level_feature_key=f"P{DECODER_LEVEL}",
        projection_filters=projection_filters,
        image_shape=(*size, 3),
        name="deeplabv3plus_backbone",
    )
    features = deeplab(hub.imagenet_normalisation(inputs))  # 256 channels at the input resolution
    logits = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(features)
    return keras.Model(inputs, logits, name="deeplabv3plus")


def pyramid_rates(dilation_rates: list[int], side: int) -> list[int]:
    """The rates the pyramid is built with on features whose longer side is `side`: a rate of at least `side`
    reads only its centre tap inside the features, as a rate of `side` does (the module's docstring)."""
    return [min(rate, side) for rate in dilation_rates]

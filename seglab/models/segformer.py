"""SegFormer (Xie, Wang, Yu, Anandkumar, Alvarez, Luo, "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers", NeurIPS 2021) on its Mix Transformer (MiT) encoder, built
from KerasHub's `MiTBackbone` and `SegFormerBackbone`.

The all-MLP decoder of section 3.2: each of the four encoder stages (strides 4, 8, 16, 32) projected
to C channels, bilinearly upsampled to stride 4, concatenated, fused by a 1x1 convolution, dropout
0.1, then a 1x1 convolution to the classes.  The paper's masks are at stride 4 (H/4 x W/4); seglab's
models answer logits at the input resolution, so they are upsampled bilinearly (bilinear resizing
has a deterministic GPU gradient; nearest-neighbour's has none, seglab/engine/determinism.py).
"""

from __future__ import annotations

import keras
import keras_hub
from keras import layers

from seglab.config.data import size_of
from seglab.models import facts, hub

DECODER_DROPOUT = 0.1  # the paper's reference implementation (mmsegmentation's SegFormerHead)


def mit_encoder(variant: str, size: tuple[int, int], preset: str | None, drop_path: float) -> keras.Model:
    """MiT-`variant` (table 6 of the paper), random or from `preset` (a MiT preset of that variant)."""
    if preset is not None:
        return hub.encoder_from_preset(preset, size, f"MiT-{variant.upper()}")
    widths, depths = facts.MIT_VARIANTS[variant]
    return keras_hub.models.MiTBackbone(
        layerwise_depths=list(depths), num_layers=len(depths), layerwise_num_heads=list(facts.MIT_HEADS),
        layerwise_sr_ratios=list(facts.MIT_REDUCTION_RATIOS), max_drop_path_rate=drop_path,
        layerwise_patch_sizes=list(facts.MIT_PATCH_SIZES), layerwise_strides=list(facts.MIT_STRIDES),
        image_shape=(*size, 3), hidden_dims=list(widths), name=f"mit_{variant}",
    )


def build(
    num_classes: int,
    image_size: int | tuple[int, int],
    variant: str,
    decoder_width: int | None,
    drop_path: float,
    preset: str | None,
) -> keras.Model:
    """The values come from conf/model/segformer.yaml (defaults), seglab/config/model.py (ranges) and
    seglab/models/facts.py (the variants).  `decoder_width` null: the paper's C for the variant."""
    size = size_of(image_size)
    inputs = keras.Input((*size, 3), name="image")
    segformer = keras_hub.models.SegFormerBackbone(
        image_encoder=mit_encoder(variant, size, preset, drop_path),
        projection_filters=decoder_width or facts.SEGFORMER_DECODER_WIDTH[variant],
        name="segformer_backbone",
    )
    x = segformer(hub.imagenet_normalisation(inputs))  # C channels at stride 4
    x = layers.Dropout(DECODER_DROPOUT, name="decoder_dropout")(x)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    logits = layers.Resizing(*size, interpolation="bilinear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"segformer_{variant}")

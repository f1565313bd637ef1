"""What the config schema (seglab/config/model.py, checked before TensorFlow loads) and the builders
beside this module both need to know about the architectures, written once.  Nothing here imports
TensorFlow or Keras, so the schema can read it in a process that never loads them."""

from __future__ import annotations

# model.encoder.weights: this word means Keras' own ImageNet file (anything else but null is a path).
IMAGENET = "imagenet"

# U-Net (Ronneberger et al. 2015, section 2): each level halves the side with a 2x2 max pooling of
# stride 2, which the decoder's 2x2 up-convolution of stride 2 undoes.
UNET_POOL = 2


def unet_input_multiple(depth: int) -> int:
    """Each side of the U-Net's input must be a multiple of this: its `depth` poolings halve both each time."""
    return UNET_POOL**depth


VGG16_STRIDE = 32  # VGG16's five 2x2 poolings: the FCN's input side must be a multiple of it
# FCN (Long et al. 2015, section 4.2): a variant's name is the stride of the finest scores it fuses
# (pool5 only; + pool4; + pool4 and pool3), by which its last layer upsamples.
FCN_VARIANTS = {"32s": 32, "16s": 16, "8s": 8}

# MobileNetV2 (Sandler et al. 2018): its block_16_project features (seglab/models/unet_mobilenet.py's
# deepest SKIPS entry) are at stride 32, so the input side must be a multiple of it.
MOBILENET_V2_STRIDE = 32
# Keras publishes ImageNet weights for these widths, each trained at these input sizes.
MOBILENET_V2_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENET_V2_IMAGENET_SIZES = (96, 128, 160, 192, 224)

# ResNet (He et al. 2016, table 1): blocks per stage of each depth, and its block type in KerasHub's
# ResNetBackbone; the stages' widths (bottleneck blocks expand them 4x).  Input side: a multiple of 32.
RESNET_DEPTHS = {
    18: ((2, 2, 2, 2), "basic_block"),
    34: ((3, 4, 6, 3), "basic_block"),
    50: ((3, 4, 6, 3), "bottleneck_block"),
    101: ((3, 4, 23, 3), "bottleneck_block"),
    152: ((3, 8, 36, 3), "bottleneck_block"),
}
RESNET_FILTERS = (64, 128, 256, 512)
RESNET_STRIDE = 32

# MiT (Xie et al. 2021, section 3.1 and table 6): per stage, the embedding widths and the number of
# encoder blocks of each variant; heads, efficient-attention reduction ratios, overlapping patch
# sizes and strides are the same for all.  The deepest stage is at stride 4 * 2 * 2 * 2 = 32.
MIT_VARIANTS = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
MIT_HEADS = (1, 2, 5, 8)
MIT_REDUCTION_RATIOS = (8, 4, 2, 1)
MIT_PATCH_SIZES = (7, 3, 3, 3)
MIT_STRIDES = (4, 2, 2, 2)
MIT_STRIDE = 32
# KerasHub 0.32's MiT loses the sequence length when the deepest stage is 1 x 1 (a 32 px input): two strides.
MIT_MIN_SIZE = 2 * MIT_STRIDE
# The all-MLP decoder's width C (section 4.1): 256 for B0 and B1, 768 for the others.
SEGFORMER_DECODER_WIDTH = {"b0": 256, "b1": 256, "b2": 768, "b3": 768, "b4": 768, "b5": 768}

# KerasHub's encoder presets (keras_hub.models.ResNetBackbone.presets, MiTBackbone.presets), by the
# architecture they hold, so the schema can tell a preset of another depth or variant before TensorFlow loads.
RESNET_PRESETS = {
    "resnet_18_imagenet": 18, "resnet_50_imagenet": 50, "resnet_101_imagenet": 101, "resnet_152_imagenet": 152,
    "resnet_v2_50_imagenet": 50, "resnet_v2_101_imagenet": 101,
}
MIT_PRESETS = {
    **{f"mit_{v}_ade20k_512": v for v in ("b0", "b1", "b2", "b3", "b4")}, "mit_b5_ade20k_640": "b5",
    **{f"mit_{v}_cityscapes_1024": v for v in MIT_VARIANTS},
}

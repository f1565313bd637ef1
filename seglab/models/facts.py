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
    """The U-Net's input side must be a multiple of this: its `depth` poolings halve it each time."""
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

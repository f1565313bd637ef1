"""The model group's schemas (conf/model/*.yaml): each architecture's arguments and their ranges."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

from seglab.config.check import require
from seglab.models import facts


@dataclass
class ModelConfig:
    _target_: str = MISSING

    def size_multiple(self) -> int:
        """Each side of the input (height and width) must be a multiple of this (total downsampling of the encoder)."""
        return 1

    def min_size(self) -> int:
        """The smallest input side (height or width) the builder accepts."""
        return self.size_multiple()


def _check_bn_momentum(value: float) -> None:
    require(
        0.0 < value < 1.0, "model.bn_momentum", value,
        "use a momentum in (0, 1): 0.9 follows the batch statistics within tens of steps; 0.99 and above need "
        "thousands of steps before inference-mode predictions are right",
    )


@dataclass
class UNetConfig(ModelConfig):
    _target_: str = "seglab.models.unet.build"
    base_filters: int = MISSING  # filters of the first level, doubled at each level down
    depth: int = MISSING  # downsampling levels (the input side must be a multiple of 2**depth)
    dropout: float = MISSING  # dropout rate on the two deepest levels
    batch_norm: bool = MISSING  # batch norm after every convolution (false: the paper's U-Net)
    bn_momentum: float = MISSING  # momentum of the batch-norm moving statistics

    def __post_init__(self) -> None:
        require(self.base_filters >= 1, "model.base_filters", self.base_filters, "use an integer >= 1 (the paper uses 64)")
        require(1 <= self.depth <= 6, "model.depth", self.depth, "use an integer from 1 to 6 (the paper uses 4)")
        require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a rate in [0, 1)")
        _check_bn_momentum(self.bn_momentum)

    def size_multiple(self) -> int:
        return facts.unet_input_multiple(self.depth)


@dataclass
class EncoderConfig:
    """A pretrained `keras.applications` encoder: `weights` is imagenet, null (random) or a file path."""

    weights: Optional[str] = MISSING  # imagenet | null (random, trained from scratch) | path to a weights file
    trainable: bool = MISSING  # false: frozen (feature extraction); true: fine-tuned with the decoder

    def __post_init__(self) -> None:
        require(
            self.weights is not None or self.trainable,
            "model.encoder.trainable",
            self.trainable,
            "a frozen encoder with random weights (model.encoder.weights=null) never learns; "
            "use model.encoder.trainable=true to train it from scratch, or pretrained weights "
            "(model.encoder.weights=imagenet or a file path)",
        )


@dataclass
class FCN8Config(ModelConfig):
    _target_: str = "seglab.models.fcn8.build"
    variant: str = MISSING  # 32s | 16s | 8s: how many skip connections refine the stride-32 scores
    fc_width: int = MISSING  # channels of fc6 (7x7 conv) and fc7 (1x1 conv)
    dropout: float = MISSING  # after fc6 and fc7
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        require(self.variant in facts.FCN_VARIANTS, "model.variant", self.variant, f"choose one of {', '.join(facts.FCN_VARIANTS)}")
        require(self.fc_width >= 1, "model.fc_width", self.fc_width, "use an integer >= 1 (the paper uses 4096)")
        require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a rate in [0, 1) (the paper uses 0.5)")

    def size_multiple(self) -> int:
        return facts.VGG16_STRIDE


@dataclass
class BatchNormEncoderConfig(EncoderConfig):
    freeze_batch_norm: bool = MISSING  # pretrained weights only: keep the loaded batch-norm statistics


@dataclass
class UNetMobileNetConfig(ModelConfig):
    _target_: str = "seglab.models.unet_mobilenet.build"
    alpha: float = MISSING  # MobileNetV2's width multiplier
    dropout: float = MISSING  # dropout rate in the decoder's upsample blocks
    bn_momentum: float = MISSING  # momentum of the batch-norm moving statistics
    encoder: BatchNormEncoderConfig = field(default_factory=BatchNormEncoderConfig)

    def __post_init__(self) -> None:
        require(self.alpha > 0, "model.alpha", self.alpha, "use a positive width multiplier (1.0 is the paper's MobileNetV2)")
        require(
            self.encoder.weights != facts.IMAGENET or self.alpha in facts.MOBILENET_V2_IMAGENET_ALPHAS,
            "model.alpha",
            self.alpha,
            f"Keras has ImageNet weights only for alpha in {list(facts.MOBILENET_V2_IMAGENET_ALPHAS)}; "
            "use one of those or model.encoder.weights=null",
        )
        require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a rate in [0, 1) (pix2pix uses 0.5)")
        _check_bn_momentum(self.bn_momentum)

    def size_multiple(self) -> int:
        return facts.MOBILENET_V2_STRIDE


def _check_preset(preset: Optional[str], presets: dict, architecture: object, what: str) -> None:
    """A KerasHub preset of the configured architecture, a handle (kaggle://, hf://) or a preset directory."""
    if preset is None or "://" in preset or Path(preset).expanduser().is_dir():
        return
    require(
        preset in presets, "model.preset", preset,
        f"use one of KerasHub's {what} presets ({', '.join(sorted(presets))}), the path of a preset directory, "
        "or null (random initialisation)",
    )
    require(
        presets[preset] == architecture, "model.preset", preset,
        f"it holds a {what} of another size ({presets[preset]}, not {architecture}): choose a preset of the configured one "
        "or set the model's size to the preset's",
    )


@dataclass
class DeepLabV3PlusConfig(ModelConfig):
    _target_: str = "seglab.models.deeplabv3plus.build"
    depth: int = MISSING  # ResNet depth of the encoder
    dilation_rates: list[int] = MISSING  # the atrous rates of the spatial pyramid pooling
    projection_filters: int = MISSING  # channels of the 1x1 projection of the stride-4 features
    preset: Optional[str] = MISSING  # a KerasHub preset for a pretrained encoder, or null (random)

    def __post_init__(self) -> None:
        require(self.depth in facts.RESNET_DEPTHS, "model.depth", self.depth, f"choose a ResNet depth of {list(facts.RESNET_DEPTHS)}")
        require(
            len(self.dilation_rates) == 3 and all(r >= 1 for r in self.dilation_rates), "model.dilation_rates", self.dilation_rates,
            "give three atrous rates >= 1 (the paper uses [6, 12, 18])",
        )
        require(self.projection_filters >= 1, "model.projection_filters", self.projection_filters, "use an integer >= 1 (the paper uses 48)")
        _check_preset(self.preset, facts.RESNET_PRESETS, self.depth, "ResNet")

    def size_multiple(self) -> int:
        return facts.RESNET_STRIDE


@dataclass
class SegFormerConfig(ModelConfig):
    _target_: str = "seglab.models.segformer.build"
    variant: str = MISSING  # the Mix Transformer's size
    decoder_width: Optional[int] = MISSING  # channels of the all-MLP decoder; null: the paper's
    drop_path: float = MISSING  # stochastic depth rate of the encoder's blocks
    preset: Optional[str] = MISSING  # a KerasHub preset for a pretrained encoder, or null (random)

    def __post_init__(self) -> None:
        require(self.variant in facts.MIT_VARIANTS, "model.variant", self.variant, f"choose one of {', '.join(facts.MIT_VARIANTS)}")
        require(
            self.decoder_width is None or self.decoder_width >= 1, "model.decoder_width", self.decoder_width,
            "use an integer >= 1, or null for the paper's width",
        )
        require(0.0 <= self.drop_path < 1.0, "model.drop_path", self.drop_path, "use a rate in [0, 1) (the paper uses 0.1)")
        _check_preset(self.preset, facts.MIT_PRESETS, self.variant, "MiT")

    def size_multiple(self) -> int:
        return facts.MIT_STRIDE

    def min_size(self) -> int:
        return facts.MIT_MIN_SIZE


# The ConfigStore entries (GROUP/NAME) that the option YAMLs name in their defaults lists.
SCHEMAS = {
    "model/unet_schema": UNetConfig,
    "model/fcn8_schema": FCN8Config,
    "model/unet_mobilenet_schema": UNetMobileNetConfig,
    "model/deeplabv3plus_schema": DeepLabV3PlusConfig,
    "model/segformer_schema": SegFormerConfig,
}

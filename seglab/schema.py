"""Structured-config schema: types come from Hydra's ConfigStore, ranges from `validate`.

Every option YAML of a group names its schema in its defaults list (e.g. `conf/model/unet.yaml`
starts with `defaults: [unet_schema]`), so a misspelt key or a wrong type fails while Hydra
composes the config.  `validate` then checks ranges and cross-group constraints (an image size
the model cannot take).  Nothing here imports TensorFlow: bad input fails in about a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


# The config groups.  An absolute path: under `python -m` Hydra would read a relative one as a package.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key and the fix."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}.")


CLASS_NAME = re.compile(r"[\w.\- ]+")


# --- model -------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    _target_: str = MISSING

    def size_multiple(self) -> int:
        """The input side must be a multiple of this (total downsampling of the encoder)."""
        return 1


@dataclass
class UNetConfig(ModelConfig):
    _target_: str = "seglab.models.unet.build"
    base_filters: int = 16
    depth: int = 4
    dropout: float = 0.3
    batch_norm: bool = False

    def __post_init__(self) -> None:
        _require(self.base_filters >= 1, "model.base_filters", self.base_filters, "use an integer >= 1 (the paper uses 64)")
        _require(1 <= self.depth <= 6, "model.depth", self.depth, "use an integer from 1 to 6 (the paper uses 4)")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a rate in [0, 1)")

    def size_multiple(self) -> int:
        return 2**self.depth


@dataclass
class EncoderConfig:
    """A pretrained `keras.applications` encoder: `weights` is imagenet, null (random) or a file path."""

    weights: Optional[str] = "imagenet"
    trainable: bool = True  # false: frozen (feature extraction); true: fine-tuned with the decoder

    def __post_init__(self) -> None:
        _require(
            self.weights is not None or self.trainable,
            "model.encoder.trainable",
            self.trainable,
            "a frozen encoder with random weights (model.encoder.weights=null) never learns; "
            "use model.encoder.trainable=true to train it from scratch, or pretrained weights "
            "(model.encoder.weights=imagenet or a file path)",
        )


FCN_VARIANTS = ("32s", "16s", "8s")


@dataclass
class FCN8Config(ModelConfig):
    _target_: str = "seglab.models.fcn8.build"
    variant: str = "8s"
    fc_width: int = 1024
    dropout: float = 0.5
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        _require(self.variant in FCN_VARIANTS, "model.variant", self.variant, f"choose one of {', '.join(FCN_VARIANTS)}")
        _require(self.fc_width >= 1, "model.fc_width", self.fc_width, "use an integer >= 1 (the paper uses 4096)")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a rate in [0, 1) (the paper uses 0.5)")

    def size_multiple(self) -> int:
        return 32  # VGG16's five 2x2 poolings


MOBILENET_V2_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


@dataclass
class UNetMobileNetConfig(ModelConfig):
    _target_: str = "seglab.models.unet_mobilenet.build"
    alpha: float = 1.0
    dropout: float = 0.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        _require(self.alpha > 0, "model.alpha", self.alpha, "use a positive width multiplier (1.0 is the paper's MobileNetV2)")
        _require(
            self.encoder.weights != "imagenet" or self.alpha in MOBILENET_V2_IMAGENET_ALPHAS,
            "model.alpha",
            self.alpha,
            f"Keras has ImageNet weights only for alpha in {list(MOBILENET_V2_IMAGENET_ALPHAS)}; "
            "use one of those or model.encoder.weights=null",
        )
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a rate in [0, 1) (pix2pix uses 0.5)")

    def size_multiple(self) -> int:
        return 32  # MobileNetV2's total stride


# --- loss --------------------------------------------------------------------------------


@dataclass
class LossConfig:
    _target_: str = MISSING

    def check_classes(self, num_classes: int) -> None:
        """Raise ConfigError if a per-class option does not fit `data.num_classes`."""


@dataclass
class CrossEntropyConfig(LossConfig):
    _target_: str = "seglab.losses.CrossEntropy"
    ignore_index: Optional[int] = None


@dataclass
class DiceConfig(LossConfig):
    _target_: str = "seglab.losses.Dice"
    ignore_index: Optional[int] = None
    squared_denominator: bool = True  # V-Net: sum of squares; false: plain sums
    include_background: bool = True
    background_index: Optional[int] = None  # the background class, left out when include_background is false
    smooth: float = 1.0
    per_image: bool = False  # Dice of each image, averaged; false: one Dice over the whole batch
    ce_weight: float = 0.0  # adds ce_weight * cross-entropy (Dice + CE)

    def __post_init__(self) -> None:
        _require(self.smooth >= 0, "loss.smooth", self.smooth, "use a float >= 0 (e.g. 1.0)")
        _require(self.ce_weight >= 0, "loss.ce_weight", self.ce_weight, "use a float >= 0 (0: Dice only, 1: Dice + CE)")
        _require(
            self.include_background or self.background_index is not None,
            "loss.include_background",
            self.include_background,
            "false needs the background class: set data.background_index (or loss.background_index) to its label",
        )

    def check_classes(self, num_classes: int) -> None:
        _require(
            self.background_index is None or 0 <= self.background_index < num_classes,
            "loss.background_index",
            self.background_index,
            f"use null or a class label in 0..{num_classes - 1}",
        )


BALANCING = ("inverse_frequency", "median_frequency")


@dataclass
class WeightedCrossEntropyConfig(LossConfig):
    _target_: str = "seglab.losses.WeightedCrossEntropy"
    ignore_index: Optional[int] = None
    # A list with one weight per class, or computed from the training split: inverse_frequency | median_frequency
    class_weights: Any = "median_frequency"

    def __post_init__(self) -> None:
        if isinstance(self.class_weights, str):
            _require(self.class_weights in BALANCING, "loss.class_weights", self.class_weights,
                     f"use {' or '.join(BALANCING)}, or a list of weights, one per class (e.g. [2.0, 2.0, 1.0])")
        else:
            weights = list(self.class_weights or [])
            _require(
                len(weights) > 0 and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights) and any(w > 0 for w in weights),
                "loss.class_weights", weights, "give non-negative numbers, one per class (e.g. [2.0, 2.0, 1.0])",
            )

    def check_classes(self, num_classes: int) -> None:
        if not isinstance(self.class_weights, str):
            _require(len(self.class_weights) == num_classes, "loss.class_weights", list(self.class_weights),
                     f"give exactly data.num_classes={num_classes} weights")


# --- data --------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    hflip: bool = True
    crop_min: float = 1.0  # random scale-crop: crop side in [crop_min, 1] x image side, zoomed back; 1.0 = off
    brightness: float = 0.0  # random brightness shift in [-b, b] (images in [0, 1]); 0 = off
    contrast: float = 0.0  # random contrast factor in [1 - c, 1 + c]; 0 = off

    def __post_init__(self) -> None:
        _require(
            0.0 < self.crop_min <= 1.0, "data.augment.crop_min", self.crop_min, "use a fraction in (0, 1] (1.0: no scale-crop)"
        )
        _require(0.0 <= self.brightness <= 1.0, "data.augment.brightness", self.brightness, "use a shift in [0, 1] (0: off)")
        _require(0.0 <= self.contrast < 1.0, "data.augment.contrast", self.contrast, "use a range in [0, 1) (0: off)")


@dataclass
class DataConfig:
    name: str = MISSING
    image_size: int = 64
    num_classes: int = MISSING
    class_names: list[str] = MISSING
    ignore_index: Optional[int] = None  # label of pixels that count nowhere (e.g. COCO crowd regions)
    background_index: Optional[int] = None  # label of the background class (shapes/pets: 1, COCO: 0)
    source: Any = MISSING  # `_target_` of a builder returning seglab.data.Splits
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache: Optional[str] = "memory"  # "memory", a file path prefix, or null
    shuffle_buffer: int = 1024

    def __post_init__(self) -> None:
        _require(self.image_size >= 8, "data.image_size", self.image_size, "use an integer >= 8")
        _require(self.num_classes >= 2, "data.num_classes", self.num_classes, "use an integer >= 2")
        _require(
            len(self.class_names) == self.num_classes,
            "data.class_names",
            list(self.class_names),
            f"give exactly data.num_classes={self.num_classes} names",
        )
        bad_names = [name for name in self.class_names if not CLASS_NAME.fullmatch(str(name))]
        _require(
            not bad_names,
            "data.class_names",
            bad_names,
            "use letters, digits, '_', '-', '.' or spaces (each name becomes part of MLflow metric names, e.g. val_iou_<name>)",
        )
        _require(
            self.ignore_index is None or not 0 <= self.ignore_index < self.num_classes,
            "data.ignore_index",
            self.ignore_index,
            f"use null or a label outside 0..{self.num_classes - 1} (e.g. 255), not a real class",
        )
        _require(
            self.background_index is None or 0 <= self.background_index < self.num_classes,
            "data.background_index",
            self.background_index,
            f"use null or a class label in 0..{self.num_classes - 1}",
        )
        _require(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "use an integer >= 1")


@dataclass
class ShapesSourceConfig:
    _target_: str = "seglab.data.shapes.build"
    image_size: int = "${..image_size}"  # type: ignore[assignment]
    train_size: int = 800
    val_size: int = 160
    test_size: int = 160  # 0: no test split (`python -m seglab.evaluate` then falls back to validation)
    max_objects: int = 3
    boundary_width: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.train_size >= 1, "data.source.train_size", self.train_size, "use an integer >= 1")
        _require(self.val_size >= 1, "data.source.val_size", self.val_size, "use an integer >= 1")
        _require(self.test_size >= 0, "data.source.test_size", self.test_size, "use an integer >= 0 (0: no test split)")
        _require(self.max_objects >= 1, "data.source.max_objects", self.max_objects, "use an integer >= 1")
        _require(self.boundary_width >= 1, "data.source.boundary_width", self.boundary_width, "use an integer >= 1")


PETS_KINDS = ("tfds", "folder")


@dataclass
class PetsSourceConfig:
    """Oxford-IIIT Pet from tensorflow-datasets (`kind: tfds`) or from the unpacked archives (`kind: folder`)."""

    _target_: str = "seglab.data.pets.build"
    kind: str = "tfds"
    tfds_dir: str = "~/tensorflow_datasets"  # kind=tfds: where `tfds build oxford_iiit_pet` put the data set
    version: str = "4.*.*"  # kind=tfds: oxford_iiit_pet version
    path: Optional[str] = None  # kind=folder: DIR with images/ and annotations/trimaps/
    val_percent: int = 10  # validation = the last val_percent % of the (shuffled, for folder) train split
    split_seed: int = 0  # kind=folder: seed of the trainval shuffle before the split
    connect_timeout: float = 5.0  # seconds for the reachability check before a download
    num_classes: int = "${..num_classes}"  # type: ignore[assignment]
    deterministic: bool = "${deterministic}"  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _require(self.kind in PETS_KINDS, "data.source.kind", self.kind, f"choose one of {', '.join(PETS_KINDS)}")
        _require(
            self.kind != "folder" or bool(self.path), "data.source.path", self.path,
            "kind=folder reads the unpacked archives: set data.source.path=DIR (DIR/images, DIR/annotations/trimaps)",
        )
        _require(1 <= self.val_percent <= 50, "data.source.val_percent", self.val_percent, "use an integer from 1 to 50")
        _require(
            self.connect_timeout > 0, "data.source.connect_timeout", self.connect_timeout, "use a positive number of seconds"
        )


@dataclass
class CocoCatSourceConfig:
    """COCO 2017 instances -> binary cat masks, converted once to sharded TFRecords."""

    _target_: str = "seglab.data.coco_cat.build"
    path: str = "data/coco"  # holds annotations/instances_<split>.json and <split>/ image folders
    cache_dir: str = "~/.cache/seglab/coco_cat"  # TFRecords, one subfolder per conversion setting
    category: str = "cat"  # COCO category name (its id is looked up in the annotation file)
    train_split: str = "train2017"
    val_split: str = "val2017"
    negative_fraction: float = 0.0  # share of each converted split made of images without the category
    shards: int = 8  # TFRecord files per split (read in parallel)
    seed: int = 0  # which cat-free images are picked as negatives
    ignore_index: Optional[int] = "${..ignore_index}"  # type: ignore[assignment]
    num_classes: int = "${..num_classes}"  # type: ignore[assignment]
    deterministic: bool = "${deterministic}"  # type: ignore[assignment]

    def __post_init__(self) -> None:
        fraction = self.negative_fraction
        _require(0.0 <= fraction < 1.0, "data.source.negative_fraction", fraction, "use a fraction in [0, 1)")
        _require(self.shards >= 1, "data.source.shards", self.shards, "use an integer >= 1")
        _require(
            self.ignore_index is None or 2 <= self.ignore_index <= 255, "data.ignore_index", self.ignore_index,
            "COCO masks are stored as 8-bit PNG: use null (crowd counts as cat) or a label in 2..255 (e.g. 255)",
        )


# --- optimizer ---------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        _require(self.learning_rate > 0, "optimizer.learning_rate", self.learning_rate, "use a positive float")


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "keras.optimizers.Adam"
    weight_decay: Optional[float] = None


# --- trainer and tracking ----------------------------------------------------------------


@dataclass
class TrainerConfig:
    epochs: int = 15
    batch_size: int = 16
    jit_compile: bool = False
    mask_samples: int = 4  # validation images shown in the per-epoch mask grid
    worst_samples: int = 8  # the k worst images by mean IoU in the end-of-run (and evaluation) grid
    checkpoint_dir: str = "checkpoints"  # relative to the job's output directory

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "trainer.epochs", self.epochs, "use an integer >= 1")
        _require(self.batch_size >= 1, "trainer.batch_size", self.batch_size, "use an integer >= 1")
        _require(self.mask_samples >= 0, "trainer.mask_samples", self.mask_samples, "use an integer >= 0")
        _require(self.worst_samples >= 0, "trainer.worst_samples", self.worst_samples, "use an integer >= 0 (0: no grid)")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "seglab"
    run_name: Optional[str] = None  # null: "<model>-<loss>-<data>" from the chosen config options
    log_model: bool = True
    register_as: Optional[str] = None  # a registered model name: each run's logged model becomes a new version
    # Set by a sweep (seglab.sweep.PARENT_RUN_ENV) so each job's run is a child of the sweep's parent run.
    parent_run_id: Optional[str] = None

    def __post_init__(self) -> None:
        _require(self.register_as is None or (bool(self.register_as.strip()) and bool(self.log_model)),
                 "tracking.register_as", self.register_as,
                 "a registered model needs a logged one: give a non-empty name and keep tracking.log_model on")


# --- top level ---------------------------------------------------------------------------

METRICS = ("val_mean_iou", "val_mean_dice", "val_pixel_accuracy", "val_loss")


@dataclass
class Config:
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    data: DataConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    seed: int = 42
    deterministic: bool = True
    optimize_metric: str = "val_mean_iou"

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", self.seed, "use a non-negative integer")
        _require(self.optimize_metric in METRICS, "optimize_metric", self.optimize_metric, f"choose one of {', '.join(METRICS)}")
        multiple = self.model.size_multiple()
        _require(
            self.data.image_size % multiple == 0,
            "data.image_size",
            self.data.image_size,
            f"this model downsamples by {multiple}, so use a multiple of {multiple} "
            f"(e.g. {max(multiple, self.data.image_size // multiple * multiple)})",
        )
        self.loss.check_classes(self.data.num_classes)
        ignore = getattr(self.loss, "ignore_index", None)
        _require(
            ignore is None or not 0 <= ignore < self.data.num_classes,
            "loss.ignore_index",
            ignore,
            f"use null or a label outside 0..{self.data.num_classes - 1} (e.g. 255): the metrics count every label in "
            "that range as a class; to leave a class out, relabel it to data.ignore_index in the data",
        )


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="unet_schema", node=UNetConfig)
    cs.store(group="model", name="fcn8_schema", node=FCN8Config)
    cs.store(group="model", name="unet_mobilenet_schema", node=UNetMobileNetConfig)
    cs.store(group="loss", name="ce_schema", node=CrossEntropyConfig)
    cs.store(group="loss", name="dice_schema", node=DiceConfig)
    cs.store(group="loss", name="weighted_schema", node=WeightedCrossEntropyConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="data/source", name="shapes_schema", node=ShapesSourceConfig)
    cs.store(group="data/source", name="pets_schema", node=PetsSourceConfig)
    cs.store(group="data/source", name="coco_cat_schema", node=CocoCatSourceConfig)
    cs.store(group="optimizer", name="adam_schema", node=AdamConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)


def compose(overrides: list[str], check: bool = True) -> DictConfig:
    """The config `python -m seglab OVERRIDES` would run, composed and (with `check`) validated, for
    the tools beside the runner: `seglab.models`, `seglab.data`, `seglab.evaluate`, and tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    if check:
        validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> Config:
    """Run every range check (the dataclasses' __post_init__); raise ConfigError on the first."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


register()

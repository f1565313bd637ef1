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

from seglab.errors import UserError, unknown_key_message

# The config groups.  An absolute path: under `python -m` Hydra would read a relative one as a package.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # seglab/conf, shipped as package data


class ConfigError(UserError, ValueError):
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


def _check_bn_momentum(value: float) -> None:
    _require(
        0.0 < value < 1.0, "model.bn_momentum", value,
        "use a momentum in (0, 1): 0.9 follows the batch statistics within tens of steps; 0.99 and above need "
        "thousands of steps before inference-mode predictions are right",
    )


@dataclass
class UNetConfig(ModelConfig):
    _target_: str = "seglab.models.unet.build"
    base_filters: int = MISSING
    depth: int = MISSING
    dropout: float = MISSING
    batch_norm: bool = MISSING
    bn_momentum: float = MISSING

    def __post_init__(self) -> None:
        _require(self.base_filters >= 1, "model.base_filters", self.base_filters, "use an integer >= 1 (the paper uses 64)")
        _require(1 <= self.depth <= 6, "model.depth", self.depth, "use an integer from 1 to 6 (the paper uses 4)")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a rate in [0, 1)")
        _check_bn_momentum(self.bn_momentum)

    def size_multiple(self) -> int:
        return 2**self.depth


@dataclass
class EncoderConfig:
    """A pretrained `keras.applications` encoder: `weights` is imagenet, null (random) or a file path."""

    weights: Optional[str] = MISSING
    trainable: bool = MISSING  # false: frozen (feature extraction); true: fine-tuned with the decoder

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
    variant: str = MISSING
    fc_width: int = MISSING
    dropout: float = MISSING
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        _require(self.variant in FCN_VARIANTS, "model.variant", self.variant, f"choose one of {', '.join(FCN_VARIANTS)}")
        _require(self.fc_width >= 1, "model.fc_width", self.fc_width, "use an integer >= 1 (the paper uses 4096)")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "use a rate in [0, 1) (the paper uses 0.5)")

    def size_multiple(self) -> int:
        return 32  # VGG16's five 2x2 poolings


@dataclass
class BatchNormEncoderConfig(EncoderConfig):
    freeze_batch_norm: bool = MISSING  # pretrained weights only: keep the loaded batch-norm statistics


MOBILENET_V2_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


@dataclass
class UNetMobileNetConfig(ModelConfig):
    _target_: str = "seglab.models.unet_mobilenet.build"
    alpha: float = MISSING
    dropout: float = MISSING
    bn_momentum: float = MISSING
    encoder: BatchNormEncoderConfig = field(default_factory=BatchNormEncoderConfig)

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
        _check_bn_momentum(self.bn_momentum)

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
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING


@dataclass
class DiceConfig(LossConfig):
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING
    squared_denominator: bool = MISSING  # V-Net: sum of squares; false: plain sums
    include_background: bool = MISSING
    background_index: Optional[int] = MISSING  # the background class, left out when include_background is false
    smooth: float = MISSING
    per_image: bool = MISSING  # Dice of each image, averaged; false: one Dice over the whole batch
    ce_weight: float = MISSING  # adds ce_weight * cross-entropy (Dice + CE)

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
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING
    # A list with one weight per class, or computed from the training split: inverse_frequency | median_frequency
    class_weights: Any = MISSING

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
    hflip: bool = MISSING
    crop_min: float = MISSING  # random scale-crop: crop side in [crop_min, 1] x image side, zoomed back; 1.0 = off
    brightness: float = MISSING  # random brightness shift in [-b, b] (images in [0, 1]); 0 = off
    contrast: float = MISSING  # random contrast factor in [1 - c, 1 + c]; 0 = off

    def __post_init__(self) -> None:
        _require(
            0.0 < self.crop_min <= 1.0, "data.augment.crop_min", self.crop_min, "use a fraction in (0, 1] (1.0: no scale-crop)"
        )
        _require(0.0 <= self.brightness <= 1.0, "data.augment.brightness", self.brightness, "use a shift in [0, 1] (0: off)")
        _require(0.0 <= self.contrast < 1.0, "data.augment.contrast", self.contrast, "use a range in [0, 1) (0: off)")


@dataclass
class DataConfig:
    name: str = MISSING
    image_size: int = MISSING
    num_classes: int = MISSING
    class_names: list[str] = MISSING
    ignore_index: Optional[int] = MISSING  # label of pixels that count nowhere (e.g. COCO crowd regions)
    background_index: Optional[int] = MISSING  # label of the background class (shapes/pets: 1, COCO: 0)
    source: Any = MISSING  # `_target_` of a builder returning seglab.data.Splits
    augment: AugmentConfig = MISSING
    cache: Optional[str] = MISSING  # "memory", a file path prefix with a directory (e.g. ./cache/pets), or null
    shuffle_buffer: int = MISSING

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
        # A bare word is a typo of `memory` far more often than a wanted file prefix in the working directory.
        _require(
            self.cache in (None, "memory") or "/" in str(self.cache), "data.cache", self.cache,
            "use memory, null, or a file path prefix with a directory (e.g. ./cache/shapes, written as <prefix>-<split>-*)",
        )


@dataclass
class ShapesSourceConfig:
    _target_: str = MISSING
    image_size: int = MISSING
    train_size: int = MISSING
    val_size: int = MISSING
    test_size: int = MISSING  # 0: no test split (`python -m seglab.evaluate` then falls back to validation)
    max_objects: int = MISSING
    boundary_width: int = MISSING
    seed: int = MISSING

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

    _target_: str = MISSING
    kind: str = MISSING
    tfds_dir: str = MISSING  # kind=tfds: where `tfds build oxford_iiit_pet` put the data set
    version: str = MISSING  # kind=tfds: oxford_iiit_pet version
    path: Optional[str] = MISSING  # kind=folder: DIR with images/ and annotations/trimaps/
    val_percent: int = MISSING  # validation = the last val_percent % of the (shuffled, for folder) train split
    split_seed: int = MISSING  # kind=folder: seed of the trainval shuffle before the split
    connect_timeout: float = MISSING  # seconds for the reachability check before a download
    num_classes: int = MISSING
    deterministic: bool = MISSING

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

    _target_: str = MISSING
    path: str = MISSING  # holds annotations/instances_<split>.json and <split>/ image folders
    cache_dir: str = MISSING  # TFRecords, one subfolder per conversion setting
    category: str = MISSING  # COCO category name (its id is looked up in the annotation file)
    train_split: str = MISSING
    val_split: str = MISSING
    negative_fraction: float = MISSING  # share of each converted split made of images without the category
    shards: int = MISSING  # TFRecord files per split (read in parallel)
    seed: int = MISSING  # which cat-free images are picked as negatives
    ignore_index: Optional[int] = MISSING
    num_classes: int = MISSING
    deterministic: bool = MISSING

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
    learning_rate: float = MISSING  # the base rate; the scheduler group shapes it over the run
    weight_decay: Optional[float] = MISSING  # decoupled (Keras applies w -= lr * wd * w); null: none

    def __post_init__(self) -> None:
        _require(self.learning_rate > 0, "optimizer.learning_rate", self.learning_rate, "use a positive float")
        _require(self.weight_decay is None or self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay,
                 "use null or a float >= 0")


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "keras.optimizers.Adam"


@dataclass
class AdamWConfig(OptimizerConfig):
    _target_: str = "keras.optimizers.AdamW"


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "keras.optimizers.SGD"
    momentum: float = MISSING
    nesterov: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0.0 <= self.momentum < 1.0, "optimizer.momentum", self.momentum, "use a float in [0, 1) (0.9 is usual)")
        _require(not self.nesterov or self.momentum > 0, "optimizer.nesterov", self.nesterov,
                 "Nesterov momentum needs optimizer.momentum > 0")


# --- scheduler ---------------------------------------------------------------------------


@dataclass
class SchedulerConfig:
    """seglab.schedules: a learning rate per optimizer step, from optimizer.learning_rate."""

    _target_: str = MISSING
    warmup_epochs: float = MISSING

    def __post_init__(self) -> None:
        _require(self.warmup_epochs >= 0, "scheduler.warmup_epochs", self.warmup_epochs, "use a number of epochs >= 0 (0: no warm-up)")

    def min_learning_rate_or_none(self) -> Optional[float]:
        """The floor the schedule decays to; None for schedules without one."""
        return None


@dataclass
class ConstantScheduleConfig(SchedulerConfig):
    _target_: str = "seglab.schedules.Constant"


@dataclass
class DecayToFloorConfig(SchedulerConfig):
    """A schedule that decays towards `min_learning_rate` (cosine, poly)."""

    min_learning_rate: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.min_learning_rate >= 0, "scheduler.min_learning_rate", self.min_learning_rate, "use a float >= 0")

    def min_learning_rate_or_none(self) -> Optional[float]:
        return self.min_learning_rate


@dataclass
class CosineScheduleConfig(DecayToFloorConfig):
    _target_: str = "seglab.schedules.Cosine"


@dataclass
class PolyScheduleConfig(DecayToFloorConfig):
    _target_: str = "seglab.schedules.Poly"
    power: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.power > 0, "scheduler.power", self.power, "use a positive power (MMSegmentation uses 0.9)")


@dataclass
class StepScheduleConfig(SchedulerConfig):
    _target_: str = "seglab.schedules.Step"
    step_epochs: int = MISSING
    gamma: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.step_epochs >= 1, "scheduler.step_epochs", self.step_epochs, "use an integer >= 1")
        _require(0 < self.gamma <= 1, "scheduler.gamma", self.gamma, "use a factor in (0, 1] (0.1 is usual)")


# --- trainer and tracking ----------------------------------------------------------------


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")  # seglab/distribute.py


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    precision: str = MISSING
    jit_compile: bool = MISSING
    steps_per_execution: int = MISSING
    strategy: str = MISSING
    mask_samples: int = MISSING  # validation images shown in the per-epoch mask grid
    worst_samples: int = MISSING  # the k worst images by mean IoU in the end-of-run (and evaluation) grid
    train_inference_images: int = MISSING  # training images scored in inference mode every epoch (0: off)
    checkpoint_dir: str = MISSING  # relative to the job's output directory
    limit_batches: Optional[int] = MISSING
    overfit_batches: Optional[int] = MISSING
    profile_batches: Optional[list[int]] = MISSING  # [first, last] training steps (from 1) to trace
    resume: str = MISSING  # auto | never | <MLflow run id> (docs/resume.md)
    checkpoint_every: int = MISSING  # epochs between uploads of the training state to the run's artifacts
    heartbeat_timeout_min: float = MISSING  # a RUNNING run on another host silent this long is taken as dead

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "trainer.epochs", self.epochs, "use an integer >= 1")
        _require(self.resume in ("auto", "never") or re.fullmatch(r"[0-9a-f]{32}", self.resume) is not None,
                 "trainer.resume", self.resume, "use auto, never or a 32-character MLflow run id")
        _require(self.checkpoint_every >= 0, "trainer.checkpoint_every", self.checkpoint_every,
                 "use an integer >= 0 (0: never upload during training, only at the end)")
        _require(self.heartbeat_timeout_min > 0, "trainer.heartbeat_timeout_min", self.heartbeat_timeout_min,
                 "use minutes > 0, longer than the longest epoch")
        _require(self.batch_size >= 1, "trainer.batch_size", self.batch_size, "use an integer >= 1")
        _require(self.precision in PRECISIONS, "trainer.precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        _require(self.steps_per_execution >= 1, "trainer.steps_per_execution", self.steps_per_execution, "use an integer >= 1")
        _require(self.strategy in STRATEGIES, "trainer.strategy", self.strategy, f"choose one of {', '.join(STRATEGIES)}")
        _require(self.mask_samples >= 0, "trainer.mask_samples", self.mask_samples, "use an integer >= 0")
        _require(self.worst_samples >= 0, "trainer.worst_samples", self.worst_samples, "use an integer >= 0 (0: no grid)")
        _require(self.train_inference_images >= 0, "trainer.train_inference_images", self.train_inference_images,
                 "use an integer >= 0 (0: off)")
        for key in ("limit_batches", "overfit_batches"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"trainer.{key}", value, "use null (all batches) or an integer >= 1")
        steps = self.profile_batches
        _require(steps is None or (len(steps) == 2 and 1 <= steps[0] <= steps[1]), "trainer.profile_batches", steps,
                 "use null (no profile) or [first, last] training steps with 1 <= first <= last, e.g. [3,5]")


LOG_MODEL = ("best", "last", False)


@dataclass
class TrackingConfig:
    uri: str = MISSING
    experiment: str = MISSING
    run_name: Optional[str] = MISSING  # null: "<model>-<loss>-<data>" from the chosen config options
    log_model: Any = MISSING  # best | last | false
    register_as: Optional[str] = MISSING  # a registered model name: each run's logged model becomes a new version
    # Set by a sweep (seglab.sweep.PARENT_RUN_ENV) so each job's run is a child of the sweep's parent run.
    parent_run_id: Optional[str] = MISSING

    def __post_init__(self) -> None:
        _require(self.log_model in LOG_MODEL, "tracking.log_model", self.log_model,
                 "use best (the weights of the best epoch by optimize_metric), last (those of the last epoch) or false")
        _require(bool(self.uri.strip()), "tracking.uri", self.uri, "give a tracking URI, e.g. sqlite:///mlflow.db or http://host:5000")
        _require(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "give an MLflow experiment name, e.g. seglab-shapes")
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
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    seed: int = MISSING
    deterministic: bool = MISSING
    optimize_metric: str = MISSING
    verbose: bool = MISSING

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
        _require(
            self.scheduler.warmup_epochs < self.trainer.epochs, "scheduler.warmup_epochs", self.scheduler.warmup_epochs,
            f"warm up for fewer epochs than trainer.epochs={self.trainer.epochs}",
        )
        floor = self.scheduler.min_learning_rate_or_none()
        _require(
            floor is None or floor <= self.optimizer.learning_rate, "scheduler.min_learning_rate", floor,
            f"use at most optimizer.learning_rate={self.optimizer.learning_rate}: the schedule decays towards it",
        )
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
    cs.store(group="optimizer", name="adamw_schema", node=AdamWConfig)
    cs.store(group="optimizer", name="sgd_schema", node=SGDConfig)
    cs.store(group="scheduler", name="constant_schema", node=ConstantScheduleConfig)
    cs.store(group="scheduler", name="cosine_schema", node=CosineScheduleConfig)
    cs.store(group="scheduler", name="poly_schema", node=PolyScheduleConfig)
    cs.store(group="scheduler", name="step_schema", node=StepScheduleConfig)
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
    """Reject keys no schema has, then run every range check (the dataclasses' __post_init__);
    raise ConfigError on the first."""
    check_known_keys(cfg)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Hydra adds any key given with `+` (e.g. `+trainer.epoch=3`) even to a structured config, and
    `OmegaConf.to_object` then drops it silently: compare every node with its dataclass's fields."""
    import dataclasses

    schema_type = OmegaConf.get_type(node)
    known = [f.name for f in dataclasses.fields(schema_type)] if dataclasses.is_dataclass(schema_type) else None
    for key in node.keys():
        name = f"{prefix}{key}"
        if known is not None and key not in known:
            raise ConfigError(unknown_key_message(name, known))
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none() and not child._is_interpolation():
            check_known_keys(child, f"{name}.")


register()

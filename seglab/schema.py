"""Structured-config schema: types come from Hydra's ConfigStore, ranges from `validate`.

Every option YAML of a group names its schema in its defaults list (e.g. `conf/model/unet.yaml`
starts with `defaults: [unet_schema]`), so a misspelt key or a wrong type fails while Hydra
composes the config.  `validate` then checks ranges and cross-group constraints (an image size
the model cannot take).  Nothing here imports TensorFlow: bad input fails in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key and the fix."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}.")


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


# --- loss --------------------------------------------------------------------------------


@dataclass
class LossConfig:
    _target_: str = MISSING


@dataclass
class CrossEntropyConfig(LossConfig):
    _target_: str = "seglab.losses.CrossEntropy"
    ignore_index: Optional[int] = None


# --- data --------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    hflip: bool = True


@dataclass
class DataConfig:
    name: str = MISSING
    image_size: int = 64
    num_classes: int = MISSING
    class_names: list[str] = MISSING
    ignore_index: Optional[int] = None  # label of pixels that count nowhere (e.g. COCO crowd regions)
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
        _require(
            self.ignore_index is None or not 0 <= self.ignore_index < self.num_classes,
            "data.ignore_index",
            self.ignore_index,
            f"use null or a label outside 0..{self.num_classes - 1} (e.g. 255), not a real class",
        )
        _require(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "use an integer >= 1")


@dataclass
class ShapesSourceConfig:
    _target_: str = "seglab.data.shapes.build"
    image_size: int = "${..image_size}"  # type: ignore[assignment]
    train_size: int = 800
    val_size: int = 160
    max_objects: int = 3
    boundary_width: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.train_size >= 1, "data.source.train_size", self.train_size, "use an integer >= 1")
        _require(self.val_size >= 1, "data.source.val_size", self.val_size, "use an integer >= 1")
        _require(self.max_objects >= 1, "data.source.max_objects", self.max_objects, "use an integer >= 1")
        _require(self.boundary_width >= 1, "data.source.boundary_width", self.boundary_width, "use an integer >= 1")


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
    checkpoint_dir: str = "checkpoints"  # relative to the job's output directory

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "trainer.epochs", self.epochs, "use an integer >= 1")
        _require(self.batch_size >= 1, "trainer.batch_size", self.batch_size, "use an integer >= 1")
        _require(self.mask_samples >= 0, "trainer.mask_samples", self.mask_samples, "use an integer >= 0")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "seglab"
    run_name: Optional[str] = None  # null: "<model>-<loss>-<data>" from the chosen config options
    log_model: bool = True
    # Set by a sweep (seglab.sweep.PARENT_RUN_ENV) so each job's run is a child of the sweep's parent run.
    parent_run_id: Optional[str] = None


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


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="unet_schema", node=UNetConfig)
    cs.store(group="loss", name="ce_schema", node=CrossEntropyConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="data/source", name="shapes_schema", node=ShapesSourceConfig)
    cs.store(group="optimizer", name="adam_schema", node=AdamConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)


def validate(cfg: DictConfig) -> Config:
    """Run every range check (the dataclasses' __post_init__); raise ConfigError on the first."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


register()

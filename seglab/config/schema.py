"""Structured-config schema: types come from Hydra's ConfigStore, ranges from `validate`.

Every option YAML of a group names its schema in its defaults list (e.g. `conf/model/unet.yaml`
starts with `defaults: [unet_schema]`), so a misspelt key or a wrong type fails while Hydra
composes the config.  Each group's dataclasses and their own ranges live in the module of the group
(seglab/config/model.py, loss.py, data.py, optimizer.py, scheduler.py, trainer.py, tracking.py); this
one registers them, composes, and checks what spans groups (an image size the model cannot take).
Nothing here imports TensorFlow: bad input fails in about a second.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from seglab.config import data, loss, model, optimizer, scheduler, sources, tracking, trainer
from seglab.config.check import ConfigError, require
from seglab.config.data import DataConfig, size_of
from seglab.config.loss import LossConfig
from seglab.config.model import ModelConfig
from seglab.config.optimizer import OptimizerConfig
from seglab.config.scheduler import SchedulerConfig
from seglab.config.tracking import TrackingConfig
from seglab.config.trainer import TrainerConfig
from seglab.errors import unknown_key_message

# The config groups.  An absolute path: under `python -m` Hydra would read a relative one as a package.
# conf/ stands at the top of the repository (experiments/ beside it, linked in as conf/experiment); a wheel
# ships it as the package data seglab/conf (pyproject.toml), so an installed copy finds it there and a checkout or
# an editable install finds the repository's own files: one copy of each.
_PACKAGE = Path(__file__).resolve().parent.parent
CONF_DIR = str(_PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf")
GROUPS = (model, loss, data, optimizer, scheduler, trainer, tracking)

MAX_SEED = 2**32 - 1  # numpy.random.seed's largest (keras.utils.set_random_seed seeds NumPy with it)
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
        require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"use an integer from 0 to {MAX_SEED} (NumPy's seeds are 32-bit)")
        require(self.optimize_metric in METRICS, "optimize_metric", self.optimize_metric, f"choose one of {', '.join(METRICS)}")
        self.check_size()
        self.loss.check_classes(self.data.num_classes)
        require(
            self.scheduler.warmup_epochs < self.trainer.epochs, "scheduler.warmup_epochs", self.scheduler.warmup_epochs,
            f"warm up for fewer epochs than trainer.epochs={self.trainer.epochs}",
        )
        floor = self.scheduler.min_learning_rate_or_none()
        require(
            floor is None or floor <= self.optimizer.learning_rate, "scheduler.min_learning_rate", floor,
            f"use at most optimizer.learning_rate={self.optimizer.learning_rate}: the schedule decays towards it",
        )
        # Keras' `model_supports_jit` answers False while TensorFlow's op determinism is on (not every op has
        # a deterministic XLA kernel), and `compile` then trains without XLA after one warning.
        require(
            not (self.trainer.jit_compile and self.deterministic), "trainer.jit_compile", self.trainer.jit_compile,
            "with deterministic=true Keras compiles without XLA, so it would do nothing: set deterministic=false to "
            "use XLA (runs are then not bit-reproducible), or trainer.jit_compile=false",
        )
        ignore = getattr(self.loss, "ignore_index", None)
        require(
            ignore is None or not 0 <= ignore < self.data.num_classes,
            "loss.ignore_index",
            ignore,
            f"use null or a label outside 0..{self.data.num_classes - 1} (e.g. 255): the metrics count every label in "
            "that range as a class; to leave a class out, relabel it to data.ignore_index in the data",
        )

    def check_size(self) -> None:
        """Each side of data.image_size a multiple of the model's downsampling and at least its smallest input;
        the size suggested is one that passes both (segformer at 48 px: 64, not 32, which is too small)."""
        multiple, smallest = self.model.size_multiple(), self.model.min_size()
        sides = size_of(self.data.image_size)

        def fixed(side: int) -> int:
            return max(side // multiple * multiple, -(-smallest // multiple) * multiple)

        suggestion = [fixed(side) for side in sides]
        example = suggestion[0] if isinstance(self.data.image_size, int) else f"[{suggestion[0]},{suggestion[1]}]"
        shown = data.plain(self.data.image_size)
        each = "" if isinstance(shown, int) else " on each side"
        require(all(side % multiple == 0 for side in sides), "data.image_size", shown,
                f"this model downsamples by {multiple}, so use a multiple of {multiple}{each} (e.g. {example})")
        require(min(sides) >= smallest, "data.image_size", shown,
                f"this model needs images of at least {smallest} px a side (e.g. {example})")


def register() -> None:
    """The top-level schema, and every group module's SCHEMAS (GROUP/NAME: dataclass)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group in GROUPS:
        for path, node in group.SCHEMAS.items():
            where, _, name = path.rpartition("/")
            cs.store(group=where, name=name, node=node)


# In the job's output directory (conf/config.yaml, hydra.run.dir): two commands started in the same second get
# two directories, not one whose checkpoints both overwrite.  The pid is this process's: it resolves run.dir.
OmegaConf.register_new_resolver("seglab_pid", os.getpid, replace=True)


def compose(overrides: list[str], check: bool = True) -> DictConfig:
    """The config `python -m seglab OVERRIDES` would run, composed and (with `check`) validated, for
    the tools beside the runner: `seglab.models`, `seglab.data`, `seglab.evaluate`, and tests."""

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    if check:
        validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> Config:
    """Reject keys no schema has, then run every range check (the dataclasses' __post_init__);
    raise ConfigError on the first.  data.num_classes / data.class_names left null are filled in `cfg` first
    (sources.fill_classes), so the run uses and logs the classes it was validated with."""
    check_known_keys(cfg)
    if isinstance(cfg.get("data"), DictConfig):
        sources.fill_classes(cfg.data)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Hydra adds any key given with `+` (e.g. `+trainer.epoch=3`) even to a structured config, and
    `OmegaConf.to_object` then drops it silently: compare every node with its dataclass's fields."""
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

"""The optimizer group's schemas (conf/optimizer/*.yaml): Keras optimizers, decoupled weight decay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from seglab.config.check import require


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    learning_rate: float = MISSING  # the base rate; the scheduler group shapes it over the run
    weight_decay: Optional[float] = MISSING  # decoupled (Keras applies w -= lr * wd * w); null: none

    def __post_init__(self) -> None:
        require(self.learning_rate > 0, "optimizer.learning_rate", self.learning_rate, "use a positive float")
        require(self.weight_decay is None or self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay,
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
        require(0.0 <= self.momentum < 1.0, "optimizer.momentum", self.momentum, "use a float in [0, 1) (0.9 is usual)")
        require(not self.nesterov or self.momentum > 0, "optimizer.nesterov", self.nesterov,
                "Nesterov momentum needs optimizer.momentum > 0")


# The ConfigStore entries (GROUP/NAME) that the option YAMLs name in their defaults lists.
SCHEMAS = {
    "optimizer/adam_schema": AdamConfig,
    "optimizer/adamw_schema": AdamWConfig,
    "optimizer/sgd_schema": SGDConfig,
}

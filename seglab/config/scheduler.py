"""The scheduler group's schemas (conf/scheduler/*.yaml): the seglab.schedules learning-rate shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from seglab.config.check import require


@dataclass
class SchedulerConfig:
    """seglab.schedules: a learning rate per optimizer step, from optimizer.learning_rate."""

    _target_: str = MISSING
    warmup_epochs: float = MISSING  # epochs of linear warm-up from 0 to the optimizer's rate; 0: none

    def __post_init__(self) -> None:
        require(self.warmup_epochs >= 0, "scheduler.warmup_epochs", self.warmup_epochs, "use a number of epochs >= 0 (0: no warm-up)")

    def min_learning_rate_or_none(self) -> Optional[float]:
        """The floor the schedule decays to; None for schedules without one."""
        return None


@dataclass
class ConstantScheduleConfig(SchedulerConfig):
    _target_: str = "seglab.schedules.Constant"


@dataclass
class DecayToFloorConfig(SchedulerConfig):
    """A schedule that decays towards `min_learning_rate` (cosine, poly)."""

    min_learning_rate: float = MISSING  # the rate the decay ends at

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.min_learning_rate >= 0, "scheduler.min_learning_rate", self.min_learning_rate, "use a float >= 0")

    def min_learning_rate_or_none(self) -> Optional[float]:
        return self.min_learning_rate


@dataclass
class CosineScheduleConfig(DecayToFloorConfig):
    _target_: str = "seglab.schedules.Cosine"


@dataclass
class PolyScheduleConfig(DecayToFloorConfig):
    _target_: str = "seglab.schedules.Poly"
    power: float = MISSING  # exponent of the polynomial decay (1: linear)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.power > 0, "scheduler.power", self.power, "use a positive power (MMSegmentation uses 0.9)")


@dataclass
class StepScheduleConfig(SchedulerConfig):
    _target_: str = "seglab.schedules.Step"
    step_epochs: int = MISSING  # epochs between two multiplications by gamma
    gamma: float = MISSING  # the factor the rate is multiplied by every step_epochs epochs

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.step_epochs >= 1, "scheduler.step_epochs", self.step_epochs, "use an integer >= 1")
        require(0 < self.gamma <= 1, "scheduler.gamma", self.gamma, "use a factor in (0, 1] (0.1 is usual)")


# The ConfigStore entries (GROUP/NAME) that the option YAMLs name in their defaults lists.
SCHEMAS = {
    "scheduler/constant_schema": ConstantScheduleConfig,
    "scheduler/cosine_schema": CosineScheduleConfig,
    "scheduler/poly_schema": PolyScheduleConfig,
    "scheduler/step_schema": StepScheduleConfig,
}

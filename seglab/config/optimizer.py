"""The optimizer group's schemas (conf/optimizer/*.yaml): Keras optimizers, decoupled weight decay."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from seglab.config.check import require

log = logging.getLogger(__name__)

# optimizer.ema_momentum in every conf/optimizer/*.yaml (tests/test_config.py keeps them equal): another value
# without optimizer.ema=true would be ignored.
EMA_MOMENTUM = 0.99
# The learning rates each optimizer is commonly trained with (Keras' defaults sit inside); a rate more than 100x
# outside gets a warning.
USUAL_RATES = {"Adam": (1e-5, 1e-2), "AdamW": (1e-5, 1e-2), "SGD": (1e-4, 1.0)}


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    learning_rate: float = MISSING  # the base rate; the scheduler group shapes it over the run
    weight_decay: Optional[float] = MISSING  # decoupled (Keras applies w -= lr * wd * w); null: none
    ema: bool = MISSING  # Keras' use_ema: evaluate, checkpoint and log the weights' exponential moving average
    ema_momentum: float = MISSING  # average <- momentum * average + (1 - momentum) * weights, every step

    def __post_init__(self) -> None:
        require(self.learning_rate > 0, "optimizer.learning_rate", self.learning_rate, "use a positive float")
        low, high = USUAL_RATES.get(self._target_.rsplit(".", 1)[-1], (1e-6, 1.0))
        if not low / 100 <= self.learning_rate <= high * 100:  # legal, but orders of magnitude off: say so, train anyway
            log.warning("optimizer.learning_rate=%g is far outside %s's usual range (%g to %g): check the exponent",
                        self.learning_rate, self._target_.rsplit(".", 1)[-1], low, high)
        require(0.0 <= self.ema_momentum < 1.0, "optimizer.ema_momentum", self.ema_momentum,
                "use a float in [0, 1) (0.99 or 0.999 are usual; 0 keeps the last weights)")
        # "Changed" is told by the value, not by the override list: a preset, a sweep's params or a user's own optimizer
        # file set it too, and the API (seglab.evaluate, tests) composes without one; the default changes nothing either way.
        require(self.ema or self.ema_momentum == EMA_MOMENTUM, "optimizer.ema_momentum", self.ema_momentum,
                f"it only takes effect with optimizer.ema=true (without it no average is kept): add optimizer.ema=true, "
                f"or leave optimizer.ema_momentum at its default {EMA_MOMENTUM}")
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
    momentum: float = MISSING  # heavy-ball momentum of the updates
    nesterov: bool = MISSING  # Nesterov's accelerated gradient instead of plain momentum

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

"""The loss group's schemas (conf/loss/*.yaml); `check_classes` is the part that needs data.num_classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from seglab.config.check import require


@dataclass
class LossConfig:
    _target_: str = MISSING

    def check_classes(self, num_classes: int) -> None:
        """Raise ConfigError if a per-class option does not fit `data.num_classes`."""


@dataclass
class CrossEntropyConfig(LossConfig):
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING  # label value that contributes nothing (data.ignore_index)


@dataclass
class DiceConfig(LossConfig):
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING  # label value that contributes nothing (data.ignore_index)
    squared_denominator: bool = MISSING  # V-Net: sum of squares; false: plain sums
    include_background: bool = MISSING  # false: the background class is left out of the mean
    background_index: Optional[int] = MISSING  # the background class, left out when include_background is false
    smooth: float = MISSING  # added to numerator and denominator: > 0 keeps an absent class finite
    per_image: bool = MISSING  # Dice of each image, averaged; false: one Dice over the whole batch
    ce_weight: float = MISSING  # adds ce_weight * cross-entropy (Dice + CE)

    def __post_init__(self) -> None:
        require(self.smooth >= 0, "loss.smooth", self.smooth, "use a float >= 0 (e.g. 1.0)")
        require(self.ce_weight >= 0, "loss.ce_weight", self.ce_weight, "use a float >= 0 (0: Dice only, 1: Dice + CE)")
        require(
            self.include_background or self.background_index is not None,
            "loss.include_background",
            self.include_background,
            "false needs the background class: set data.background_index (or loss.background_index) to its label",
        )

    def check_classes(self, num_classes: int) -> None:
        require(
            self.background_index is None or 0 <= self.background_index < num_classes,
            "loss.background_index",
            self.background_index,
            f"use null or a class label in 0..{num_classes - 1}",
        )


BALANCING = ("inverse_frequency", "median_frequency")


@dataclass
class WeightedCrossEntropyConfig(LossConfig):
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING  # label value that contributes nothing (data.ignore_index)
    # A list with one weight per class, or computed from the training split: inverse_frequency | median_frequency
    class_weights: Any = MISSING  # one weight per class, or how to compute them from the training masks

    def __post_init__(self) -> None:
        if isinstance(self.class_weights, str):
            require(self.class_weights in BALANCING, "loss.class_weights", self.class_weights,
                    f"use {' or '.join(BALANCING)}, or a list of weights, one per class (e.g. [2.0, 2.0, 1.0])")
        else:
            weights = list(self.class_weights or [])
            require(
                len(weights) > 0 and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights) and any(w > 0 for w in weights),
                "loss.class_weights", weights, "give non-negative numbers, one per class (e.g. [2.0, 2.0, 1.0])",
            )

    def check_classes(self, num_classes: int) -> None:
        if not isinstance(self.class_weights, str):
            require(len(self.class_weights) == num_classes, "loss.class_weights", list(self.class_weights),
                    f"give exactly data.num_classes={num_classes} weights")


@dataclass
class FocalConfig(LossConfig):
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING  # label value that contributes nothing (data.ignore_index)
    gamma: float = MISSING  # focusing parameter: 0 is cross-entropy
    alpha: Optional[list[float]] = MISSING  # one weight per class, or null (all 1)

    def __post_init__(self) -> None:
        require(self.gamma >= 0, "loss.gamma", self.gamma, "use a float >= 0 (0: cross-entropy, 2: the paper's)")
        require(self.alpha is None or (len(self.alpha) > 0 and all(a >= 0 for a in self.alpha)), "loss.alpha",
                None if self.alpha is None else list(self.alpha), "use null or non-negative weights, one per class")
        # Every pixel's loss is alpha[label] * ...: with all weights 0 the loss is exactly 0 and nothing trains.
        require(self.alpha is None or any(a > 0 for a in self.alpha), "loss.alpha", list(self.alpha or []),
                "with every weight 0 the loss is exactly 0 and the model never learns; give at least one weight > 0, "
                "or null (all 1)")

    def check_classes(self, num_classes: int) -> None:
        require(self.alpha is None or len(self.alpha) == num_classes, "loss.alpha", list(self.alpha or []),
                f"give exactly data.num_classes={num_classes} weights, or null")


@dataclass
class TverskyConfig(LossConfig):
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING  # label value that contributes nothing (data.ignore_index)
    alpha: float = MISSING  # weight of false positives
    beta: float = MISSING  # weight of false negatives
    smooth: float = MISSING  # added to numerator and denominator: > 0 keeps an absent class finite

    def __post_init__(self) -> None:
        require(self.alpha >= 0, "loss.alpha", self.alpha, "use a float >= 0 (the weight of false positives, e.g. 0.3)")
        require(self.beta >= 0, "loss.beta", self.beta, "use a float >= 0 (the weight of false negatives, e.g. 0.7)")
        require(self.smooth > 0, "loss.smooth", self.smooth,
                "use a float > 0 (e.g. 1.0): with 0 a class absent from target and prediction divides 0 by 0")
        # (TP + smooth) / (TP + 0 FP + 0 FN + smooth) is 1 for every prediction: a loss of exactly 0.
        require(self.alpha > 0 or self.beta > 0, "loss.alpha", self.alpha,
                f"with loss.beta={self.beta} too the Tversky index is 1 for any prediction, so the loss is exactly 0 and the "
                "model never learns; give loss.alpha or loss.beta a weight > 0 (0.5 and 0.5 is soft Dice)")


@dataclass
class LovaszConfig(LossConfig):
    _target_: str = MISSING
    ignore_index: Optional[int] = MISSING  # label value that contributes nothing (data.ignore_index)


# The ConfigStore entries (GROUP/NAME) that the option YAMLs name in their defaults lists.
SCHEMAS = {
    "loss/ce_schema": CrossEntropyConfig,
    "loss/dice_schema": DiceConfig,
    "loss/weighted_schema": WeightedCrossEntropyConfig,
    "loss/focal_schema": FocalConfig,
    "loss/tversky_schema": TverskyConfig,
    "loss/lovasz_schema": LovaszConfig,
}

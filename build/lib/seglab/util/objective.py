"""Which way a metric is better: the one rule shared by the checkpointer, the console, sweeps and reports."""

from __future__ import annotations


def minimized(metric: str) -> bool:
    """A loss (`val_loss`, `loss`) is minimised; every score (mIoU, Dice, pixel accuracy) is maximised."""
    return metric.endswith("loss")


def best(values, metric: str):
    """The best of `values` for `metric` (None when there are none)."""
    values = list(values)
    if not values:
        return None
    return min(values) if minimized(metric) else max(values)

"""Which jobs of a sweep can be told apart on the test split: a paired bootstrap over the test images.

Each job's per-image table (`per_image_test.json`, seglab.engine.per_image) gives, per image and
class, the IoU and the class's share of the labelled pixels in the truth and in the prediction.
From these the image's counts are exact again: truth T = share * pixels, prediction P = share *
pixels, and with U = T + P - TP, IoU = TP / U gives TP = IoU (T + P) / (1 + IoU).  Summing the
counts over images gives the split's pooled IoU per class, and their mean over the classes present
(seglab.metrics' definition), so a job's estimate on all its images is its logged `test_mean_iou`.

The bootstrap draws the test images with replacement (`RESAMPLES` times, seeded): the SAME draws
for every job, since every job was scored on the same images, so an image that is hard for all jobs
moves them together and the differences between jobs vary less than the jobs do.  Each draw gives
every job's pooled mIoU over the drawn images; the `CONFIDENCE` percentile interval of those is the
job's interval, and the percentile interval of (best - job) says whether the job is distinguishable
from the best (the interval excludes 0) or not.  It measures the uncertainty from which images were
drawn for the test, not from training (another seed would give other models).

Pure NumPy, no TensorFlow: the report reads tables, it runs no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

RESAMPLES = 2000  # bootstrap draws: percentile intervals need on the order of a thousand (Efron & Tibshirani 1993)
CONFIDENCE = 0.95
SEED = 0  # the same draws on every report of the same tables
UNORDERED = "unordered:"  # a per-image row's name prefix where the source neither named its images nor read them in a fixed order


@dataclass
class Comparison:
    """Jobs in the order given; `best` the index of the highest mIoU on all images."""

    mean_iou: np.ndarray  # (J,) pooled mIoU on all the test images
    low: np.ndarray  # (J,) the job's percentile interval
    high: np.ndarray
    diff_low: np.ndarray  # (J,) the percentile interval of (best - job); 0 for the best itself
    diff_high: np.ndarray
    best: int
    images: int
    resamples: int

    @property
    def distinguishable(self) -> np.ndarray:
        """(J,) bool: the interval of best - job excludes 0 (False for the best itself)."""
        return (self.diff_low > 0) | (self.diff_high < 0)


def counts_from_table(columns: Mapping[str, Sequence]) -> tuple[list[str], np.ndarray]:
    """The image names and the (N, C, 3) counts (TP, truth, prediction) per image and class of a
    per-image table (seglab.engine.per_image.table's columns; NaN or None where a class is absent)."""
    classes = [key[len("iou_"):] for key in columns if key.startswith("iou_")]
    pixels = np.asarray(columns["pixels"], dtype=np.float64)[:, None]
    iou = np.nan_to_num(np.asarray([columns[f"iou_{c}"] for c in classes], dtype=np.float64).T)
    truth = np.rint(np.asarray([columns[f"true_{c}"] for c in classes], dtype=np.float64).T * pixels)
    pred = np.rint(np.asarray([columns[f"pred_{c}"] for c in classes], dtype=np.float64).T * pixels)
    tp = np.rint(iou * (truth + pred) / (1 + iou))
    return [str(name) for name in columns["image"]], np.stack([tp, truth, pred], axis=-1)


def mean_iou(summed: np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present of (..., C, 3) summed counts, as seglab.metrics defines it."""
    tp, truth, pred = summed[..., 0], summed[..., 1], summed[..., 2]
    union = truth + pred - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(union, dtype=np.float64), where=present)
    n_present = present.sum(-1)
    return np.divide(iou.sum(-1), n_present, out=np.full(n_present.shape, np.nan), where=n_present > 0)


def align(tables: Sequence[tuple[list[str], np.ndarray]]) -> tuple[np.ndarray | None, str | None]:
    """The jobs' counts as one (J, N, C, 3) array with the images in the first job's order, or None
    and one line saying why not: the jobs were not scored on the same images (or the same classes)."""
    names, _ = tables[0]
    if any(str(name).startswith(UNORDERED) for other, _ in tables for name in other):
        return None, ("the test images have no names and were read in no fixed order (deterministic=false), so images "
                      "cannot be matched between jobs: no intervals; score the jobs with deterministic=true")
    if len(set(names)) != len(names):
        return None, "the per-image tables name an image twice, so images cannot be matched: no intervals"
    for other, counts in tables[1:]:
        if sorted(other) != sorted(names) or counts.shape[1:] != tables[0][1].shape[1:]:
            return None, (f"the jobs were not tested on the same images ({len(names)} vs {len(other)} images, "
                          "or other names or classes): no intervals; evaluate every job with the same data settings")
    order = [{name: i for i, name in enumerate(other)} for other, _ in tables]
    return np.stack([counts[[where[name] for name in names]] for (_, counts), where in zip(tables, order)]), None


def draws(images: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, images) how often each image is drawn in each resample (images drawn with replacement)."""
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, images, size=(resamples, images)) + images * np.arange(resamples)[:, None]
    return np.bincount(picked.ravel(), minlength=resamples * images).reshape(resamples, images)


def paired_bootstrap(counts: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
                     confidence: float = CONFIDENCE) -> Comparison:
    """Intervals of each job's mIoU and of (best - job) from (J, N, C, 3) counts, the same draws for every job."""
    jobs, images = counts.shape[:2]
    weights = draws(images, resamples, seed).astype(np.float64)
    flat = counts.reshape(jobs, images, -1)
    resampled = mean_iou(np.einsum("rn,jnk->jrk", weights, flat).reshape(jobs, resamples, *counts.shape[2:]))  # (J, R)
    point = mean_iou(counts.sum(1))
    best = int(np.nanargmax(point))
    tails = [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2]
    low, high = np.nanpercentile(resampled, tails, axis=1)
    diff_low, diff_high = np.nanpercentile(resampled[best] - resampled, tails, axis=1)
    return Comparison(point, low, high, diff_low, diff_high, best, images, resamples)

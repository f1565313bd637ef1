"""Per-image evaluation: one confusion matrix per image (`metrics.image_confusion_matrices`),
scored by `metrics.scores` (the formulas of the split-level figures, in one place), as a table with
one row per image, and the k worst images by mean IoU as a grid
(input | truth | prediction | errors).

Pixel-pooled and image-averaged scores: the split-level figures come from one confusion matrix
summed over every pixel of the split (the sum of the per-image matrices), so a large image weighs
more than a small one and a class's IoU is TP / (TP + FP + FN) over all its pixels.  Averaging the
table's columns instead weighs every image equally.  They agree for pixel accuracy and the class
shares when the column is weighted by the image's labelled `pixels` (the table keeps them for that),
and they differ for IoU and Dice: a ratio of sums is not the mean of the ratios, and an image where
a class is absent from truth and prediction has no score for it (NaN, left out of its mean) while
the pooled matrix counts that class's pixels from the other images.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from seglab import metrics
from seglab.engine import compare
from seglab.util import signals, visualize


@dataclass
class Example:
    """One image kept for the gallery: float RGB [0, 1], truth and prediction at the model's size."""

    index: int
    mean_iou: float
    image: np.ndarray
    mask: np.ndarray
    pred: np.ndarray


@dataclass
class PerImage:
    matrices: np.ndarray  # (N, C, C) int64, rows true classes, one matrix per image in split order
    worst: list[Example] = field(default_factory=list)  # the k worst by mean IoU, worst first

    @property
    def split_matrix(self) -> np.ndarray:
        """The pixel-pooled confusion matrix of the whole split (what `metrics.split_confusion_matrix` gives)."""
        return self.matrices.sum(0)


def score_images(model, batches, num_classes: int, worst: int = 0, logits=None) -> PerImage:
    """Per-image confusion matrices of `model` over a split of `(image, mask)` batches, and its
    `worst` worst images by mean IoU (images with no labelled pixel are not ranked).  `logits`: how the
    model is applied to a batch (e.g. seglab.inference.batch_logits' slide mode); None: `model(batch)`."""

    matrices, kept, index = [], [], 0  # kept: a heap of (-mean IoU, -index, Example), the best of the worst on top
    for images, masks in batches:
        signals.raise_if_swallowed()  # a Ctrl-C Python swallowed stops scoring as it stops training
        found = logits(images) if logits else model(images, training=False)
        labels = tf.argmax(found, axis=-1, output_type=tf.int32)
        batch = metrics.image_confusion_matrices(masks, labels, num_classes).numpy()
        matrices.append(batch)
        for i, cm in enumerate(batch):
            mean_iou = metrics.scores(cm)["mean_iou"]
            if worst and np.isfinite(mean_iou):
                candidate = (-mean_iou, -(index + i))
                if len(kept) < worst or candidate > kept[0][:2]:
                    example = Example(index + i, mean_iou, np.asarray(images[i]), np.asarray(masks[i]), labels[i].numpy())
                    (heapq.heappush if len(kept) < worst else heapq.heapreplace)(kept, (*candidate, example))
        index += len(batch)
    stacked = np.concatenate(matrices) if matrices else np.zeros((0, num_classes, num_classes), np.int64)
    return PerImage(stacked, [entry[2] for entry in sorted(kept, reverse=True)])


def table(result: PerImage, class_names: list[str], names: list[str] | None = None,
          ordered: bool = True) -> dict[str, list]:
    """One row per image, as columns: `image` (its file name when the source knows it, else its index, prefixed with
    compare.UNORDERED unless the split was read in a fixed order), `index`, labelled `pixels`, `pixel_accuracy`,
    `mean_iou`, `mean_dice`, `iou_<class>`, `dice_<class>` (NaN where the class is in neither truth nor prediction),
    and the share of each class among the image's labelled pixels in the truth (`true_<class>`) and the prediction
    (`pred_<class>`)."""
    columns: dict[str, list] = {"image": [], "index": [], "pixels": [], "pixel_accuracy": [], "mean_iou": [], "mean_dice": []}
    for kind in ("iou", "dice", "true", "pred"):
        columns.update({f"{kind}_{name}": [] for name in class_names})
    for i, cm in enumerate(result.matrices):
        s = metrics.scores(cm)
        pixels = int(cm.sum())
        columns["image"].append(names[i] if names else str(i) if ordered else f"{compare.UNORDERED}{i}")
        columns["index"].append(i)
        columns["pixels"].append(pixels)
        for key in ("pixel_accuracy", "mean_iou", "mean_dice"):
            columns[key].append(float(s[key]))
        truth, pred = cm.sum(1) / max(pixels, 1), cm.sum(0) / max(pixels, 1)
        for c, name in enumerate(class_names):
            columns[f"iou_{name}"].append(float(s["iou"][c]))
            columns[f"dice_{name}"].append(float(s["dice"][c]))
            columns[f"true_{name}"].append(float(truth[c]))
            columns[f"pred_{name}"].append(float(pred[c]))
    return columns


def worst_grid(result: PerImage, num_classes: int) -> np.ndarray | None:
    """input | truth | prediction over the input | errors, one row per worst image, worst first."""

    if not result.worst:
        return None
    return visualize.mask_grid(
        np.stack([e.image for e in result.worst]), np.stack([e.mask for e in result.worst]),
        np.stack([e.pred for e in result.worst]), num_classes=num_classes, show_errors=True,
    )


def worst_list(result: PerImage, names: list[str] | None = None) -> list[dict]:
    """The grid's rows, top to bottom, as `{image, index, mean_iou}` (what the picture cannot say)."""
    return [{"image": names[e.index] if names else str(e.index), "index": e.index, "mean_iou": e.mean_iou}
            for e in result.worst]


def log(run, result: PerImage, class_names: list[str], split: str, names: list[str] | None = None, ordered: bool = True) -> None:
    """To `run` (a tracking.Run): the table `per_image_<split>.json` and the gallery `worst_<split>.png`
    with `worst_<split>.json` naming its rows."""
    run.log_table(table(result, class_names, names, ordered), f"per_image_{split}.json")
    grid = worst_grid(result, len(class_names))
    if grid is not None:
        run.log_image(grid, f"worst_{split}.png")
        run.log_dict({"rows": worst_list(result, names), "columns": ["input", "truth", "prediction", "errors"]},
                     f"worst_{split}.json")

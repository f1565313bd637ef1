"""Segmentation metrics from one confusion matrix accumulated over a whole split.

The confusion matrix is computed on integer label maps as a one-hot matrix product
(`onehot(true)^T @ onehot(pred)`), which is deterministic on every device, unlike scatter- or
bincount-based `tf.math.confusion_matrix`.  Labels outside [0, num_classes) (an ignore index)
give all-zero one-hot rows and so are not counted.  The product runs in float64, whose integer
sums are exact up to 2**53 (float32 stops at 2**24 = 16.8 M pixels, one batch of 16 images at
1024 px), and batches accumulate in int64, so counts over any split stay exact.

Pixel accuracy, per-class IoU = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN), and their
means over the classes that occur in the target or the prediction (a class absent from both
has no IoU: its per-class scores are NaN, and it is left out of the means rather than counted
as 0 or 1).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

def confusion_matrix(y_true, y_pred_labels, num_classes: int):
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predictions."""
    y_true = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    y_pred = tf.reshape(tf.cast(y_pred_labels, tf.int32), [-1])
    true_hot = tf.one_hot(y_true, num_classes, dtype=tf.float64)
    pred_hot = tf.one_hot(y_pred, num_classes, dtype=tf.float64) * tf.reduce_sum(true_hot, -1, keepdims=True)
    return tf.cast(tf.matmul(true_hot, pred_hot, transpose_a=True), tf.int64)


def image_confusion_matrices(y_true, y_pred_labels, num_classes: int):
    """(B, num_classes, num_classes) int64 counts, one matrix per image of a batch; the same
    one-hot product as `confusion_matrix` per image, so their sum over the batch is its matrix."""
    batch = tf.shape(y_true)[0]
    y_true = tf.reshape(tf.cast(y_true, tf.int32), [batch, -1])
    y_pred = tf.reshape(tf.cast(y_pred_labels, tf.int32), [batch, -1])
    true_hot = tf.one_hot(y_true, num_classes, dtype=tf.float64)
    pred_hot = tf.one_hot(y_pred, num_classes, dtype=tf.float64) * tf.reduce_sum(true_hot, -1, keepdims=True)
    return tf.cast(tf.matmul(true_hot, pred_hot, transpose_a=True), tf.int64)


def scores(cm) -> dict[str, np.ndarray | float]:
    """Pixel accuracy, per-class IoU and Dice, and their means, from a confusion matrix (NumPy)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    present = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / (tp + fp + fn), np.nan)
        dice = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
    total = cm.sum()
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "iou": iou,
        "dice": dice,
        "mean_iou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "mean_dice": float(np.nanmean(dice)) if present.any() else float("nan"),
    }


def _scores_tf(cm):
    """The same formulas as `scores`, in TensorFlow, for the Keras metrics."""
    cm = tf.cast(cm, tf.float64)
    tp = tf.linalg.diag_part(cm)
    fp = tf.reduce_sum(cm, 0) - tp
    fn = tf.reduce_sum(cm, 1) - tp
    present = (tp + fp + fn) > 0
    iou = tf.math.divide_no_nan(tp, tp + fp + fn)
    dice = tf.math.divide_no_nan(2 * tp, 2 * tp + fp + fn)
    n_present = tf.reduce_sum(tf.cast(present, tf.float64))
    zeros = tf.zeros_like(iou)
    nan = tf.fill(tf.shape(iou), tf.constant(np.nan, tf.float64))
    return {
        "pixel_accuracy": tf.math.divide_no_nan(tf.reduce_sum(tp), tf.reduce_sum(cm)),
        "iou": tf.where(present, iou, nan),
        "dice": tf.where(present, dice, nan),
        "mean_iou": tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, iou, zeros)), n_present),
        "mean_dice": tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, dice, zeros)), n_present),
    }


class ConfusionMatrix(keras.metrics.Metric):
    """Accumulates the confusion matrix of argmax(logits) against integer labels.

    Its own result is pixel accuracy; `ScoreView`s read the other scores from its state, so
    one matrix product per batch serves every metric.
    """

    def __init__(self, num_classes: int, name: str = "pixel_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.matrix = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", dtype="int64", name="matrix")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        self.matrix.assign_add(confusion_matrix(y_true, labels, self.num_classes))

    def result(self):
        return tf.cast(_scores_tf(self.matrix)["pixel_accuracy"], tf.float32)

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


class ScoreView(keras.metrics.Metric):
    """One score (e.g. mean IoU, or the IoU of one class) read from a ConfusionMatrix's state."""

    def __init__(self, source: ConfusionMatrix, score: str, index: int | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name or score, **kwargs)
        self.source, self.score, self.index = source, score, index

    def update_state(self, y_true, y_pred, sample_weight=None):
        pass  # the source metric counts the batch

    def result(self):
        value = _scores_tf(self.source.matrix)[self.score]
        if self.index is not None:
            value = value[self.index]
        return tf.cast(value, tf.float32)

    def reset_state(self):
        pass  # reset with the source


def segmentation_metrics(num_classes: int, class_names: list[str]) -> list[keras.metrics.Metric]:
    """pixel_accuracy, mean_iou, mean_dice, iou_<class> and dice_<class> for every class, sharing one matrix."""
    cm = ConfusionMatrix(num_classes)
    per_class = [ScoreView(cm, score, i, name=f"{score}_{name}") for score in ("iou", "dice") for i, name in enumerate(class_names)]
    return [cm, ScoreView(cm, "mean_iou"), ScoreView(cm, "mean_dice"), *per_class]


def split_confusion_matrix(model: keras.Model, batches, num_classes: int) -> np.ndarray:
    """The confusion matrix of `model`'s predictions over a whole split of `(image, mask)` batches."""
    total = np.zeros((num_classes, num_classes), np.int64)
    for images, masks in batches:
        labels = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
        total += confusion_matrix(masks, labels, num_classes).numpy()
    return total

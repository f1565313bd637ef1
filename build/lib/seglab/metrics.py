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


def _scores_tf(cm):
    """Pixel accuracy, per-class IoU and Dice, and their means (the formulas of the module docstring),
    in TensorFlow: the Keras metrics run it in the graph, `scores` eagerly."""
    cm = tf.cast(cm, tf.float64)
    tp = tf.linalg.diag_part(cm)
    fp = tf.reduce_sum(cm, 0) - tp
    fn = tf.reduce_sum(cm, 1) - tp
    present = (tp + fp + fn) > 0
    n_present = tf.reduce_sum(tf.cast(present, tf.float64))
    nan = tf.constant(np.nan, tf.float64)
    iou = tf.where(present, tf.math.divide_no_nan(tp, tp + fp + fn), nan)
    dice = tf.where(present, tf.math.divide_no_nan(2 * tp, 2 * tp + fp + fn), nan)

    def mean(per_class):  # over the classes present; NaN when none is
        return tf.where(n_present > 0, tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, per_class, 0.0)), n_present), nan)

    total = tf.reduce_sum(cm)
    return {
        "pixel_accuracy": tf.where(total > 0, tf.math.divide_no_nan(tf.reduce_sum(tp), total), nan),
        "iou": iou,
        "dice": dice,
        "mean_iou": mean(iou),
        "mean_dice": mean(dice),
    }


def scores(cm) -> dict[str, np.ndarray | float]:
    """`_scores_tf` of a NumPy confusion matrix, as NumPy arrays (per class) and floats (the rest)."""
    values = _scores_tf(tf.constant(np.asarray(cm, dtype=np.int64)))
    return {key: value.numpy() if value.shape.rank else float(value) for key, value in values.items()}


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
        return _result(self.matrix, "pixel_accuracy")

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
        return _result(self.source.matrix, self.score, self.index)

    def reset_state(self):
        pass  # reset with the source


def _result(matrix, score: str, index: int | None = None):
    """A Keras metric's value: the score, or 0 before any pixel is counted (Keras' convention after a reset)."""
    value = _scores_tf(matrix)[score]
    if index is not None:
        value = value[index]
    return tf.cast(tf.where(tf.reduce_sum(matrix) > 0, value, 0.0), tf.float32)


def segmentation_metrics(num_classes: int, class_names: list[str]) -> list[keras.metrics.Metric]:
    """pixel_accuracy, mean_iou, mean_dice, iou_<class> and dice_<class> for every class, sharing one matrix."""
    cm = ConfusionMatrix(num_classes)
    per_class = [ScoreView(cm, score, i, name=f"{score}_{name}") for score in ("iou", "dice") for i, name in enumerate(class_names)]
    return [cm, ScoreView(cm, "mean_iou"), ScoreView(cm, "mean_dice"), *per_class]


def split_confusion_matrix(model: keras.Model, batches, num_classes: int, loss=None):
    """The confusion matrix of `model`'s inference-mode predictions over a whole split of `(image, mask)`
    batches; with a `loss`, also its mean over the batches, weighted by batch size: `(matrix, mean loss)`."""
    total = np.zeros((num_classes, num_classes), np.int64)
    loss_sum, images_seen = 0.0, 0
    for images, masks in batches:
        logits = model(images, training=False)
        labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
        total += confusion_matrix(masks, labels, num_classes).numpy()
        if loss is not None:
            count = int(images.shape[0])
            loss_sum += float(loss(masks, logits)) * count
            images_seen += count
    if loss is None:
        return total
    return total, loss_sum / max(images_seen, 1)

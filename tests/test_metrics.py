"""Metrics on integer label maps against hand-computed values."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from seglab import metrics

TRUE = np.array([[0, 0, 1, 1], [0, 0, 1, 2], [2, 2, 1, 1]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 1, 1]])
# By hand (rows true, columns predicted):
#   true 0 (4 px): predicted 0,1,0,0          -> [3, 1, 0]
#   true 1 (5 px): predicted 1,1,1,1,1        -> [0, 5, 0]
#   true 2 (3 px): predicted 1 (row 1), 2, 0  -> [1, 1, 1]
HAND_CM = np.array([[3, 1, 0], [0, 5, 0], [1, 1, 1]])


def test_confusion_matrix_matches_hand_count():
    cm = metrics.confusion_matrix(TRUE, PRED, 3).numpy()
    np.testing.assert_array_equal(cm, HAND_CM)
    assert cm.dtype == np.int64


def test_scores_match_hand_computed_values():
    s = metrics.scores(HAND_CM)
    assert s["pixel_accuracy"] == pytest.approx(9 / 12)
    # IoU = TP / (TP + FP + FN): class 0: 3/(3+1+1); class 1: 5/(5+2+0); class 2: 1/(1+0+2)
    np.testing.assert_allclose(s["iou"], [3 / 5, 5 / 7, 1 / 3])
    np.testing.assert_allclose(s["dice"], [6 / 8, 10 / 12, 2 / 4])
    assert s["mean_iou"] == pytest.approx((3 / 5 + 5 / 7 + 1 / 3) / 3)
    assert s["mean_dice"] == pytest.approx((6 / 8 + 10 / 12 + 2 / 4) / 3)


def test_labels_outside_range_are_ignored():
    true = np.array([0, 1, 255, -1, 1])
    pred = np.array([0, 1, 1, 0, 0])
    np.testing.assert_array_equal(metrics.confusion_matrix(true, pred, 2).numpy(), [[1, 0], [1, 1]])


def test_class_absent_from_target_and_prediction_is_left_out_of_the_mean():
    cm = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 0]])
    s = metrics.scores(cm)
    assert np.isnan(s["iou"][2])
    assert s["mean_iou"] == 1.0 and s["mean_dice"] == 1.0


def test_perfect_prediction_gives_one():
    s = metrics.scores(metrics.confusion_matrix(TRUE, TRUE, 3).numpy())
    assert s["mean_iou"] == 1.0 and s["pixel_accuracy"] == 1.0 and s["mean_dice"] == 1.0


def test_keras_metrics_accumulate_over_batches_not_average_them():
    """Split the example into two batches of different content: the result must equal the score of
    the pooled confusion matrix, which a per-batch average would not give."""
    ms = metrics.segmentation_metrics(3, ["a", "b", "c"])
    logits = np.eye(3, dtype=np.float32)[PRED]  # argmax(logits) == PRED
    for rows in (slice(0, 1), slice(1, 3)):
        for m in ms:
            m.update_state(TRUE[None, rows], logits[None, rows])
    results = {m.name: float(m.result()) for m in ms}
    expected = metrics.scores(HAND_CM)
    assert results["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"])
    assert results["mean_iou"] == pytest.approx(expected["mean_iou"])
    assert results["mean_dice"] == pytest.approx(expected["mean_dice"])
    assert results["iou_c"] == pytest.approx(1 / 3)
    for m in ms:
        m.reset_state()
    assert float(ms[0].result()) == 0.0 and float(ms[1].result()) == 0.0


def test_keras_metrics_inside_fit_and_evaluate_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=(6, 8, 8))
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=metrics.segmentation_metrics(3, ["a", "b", "c"]))
    results = model.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)
    pred = np.argmax(model.predict(x, verbose=0), -1)
    expected = metrics.scores(metrics.confusion_matrix(y, pred, 3).numpy())
    assert results["mean_iou"] == pytest.approx(expected["mean_iou"], rel=1e-5)
    assert results["iou_b"] == pytest.approx(expected["iou"][1], rel=1e-5)


def test_confusion_matrix_is_exact_beyond_float32_integers():
    """Accumulation across batches is int64, so counts above 2**24 stay exact."""
    m = metrics.ConfusionMatrix(2)
    m.matrix.assign(tf.constant([[2**24 + 1, 0], [0, 0]], tf.int64))
    m.update_state(np.zeros((1, 1, 1)), np.array([[[[1.0, 0.0]]]], np.float32))
    assert int(m.matrix.numpy()[0, 0]) == 2**24 + 2


def test_one_batch_with_more_pixels_than_float32_counts_exactly():
    """A cell of 2**24 + 3 pixels in one batch (16 images of 1024 px is about that many): float32
    cannot represent it (it rounds to 2**24 + 4)."""
    labels = np.zeros(2**24 + 8, np.int32)
    labels[:5] = 1
    cm = metrics.confusion_matrix(labels, np.zeros_like(labels), 2).numpy()
    np.testing.assert_array_equal(cm, [[2**24 + 3, 0], [5, 0]])


def test_per_class_dice_views_match_hand_values_and_absent_classes_are_nan():
    """Per-class Dice 2 TP / (2 TP + FP + FN) from HAND_CM; a fourth class, absent from target
    and prediction, is NaN per class (not a misleading 0) and left out of the means."""
    ms = metrics.segmentation_metrics(4, ["a", "b", "c", "absent"])
    logits = np.eye(4, dtype=np.float32)[PRED]
    for m in ms:
        m.update_state(TRUE[None], logits[None])
    results = {m.name: float(m.result()) for m in ms}
    assert [results[f"dice_{n}"] for n in "abc"] == pytest.approx([6 / 8, 10 / 12, 2 / 4])
    assert np.isnan(results["dice_absent"]) and np.isnan(results["iou_absent"])
    assert results["mean_dice"] == pytest.approx(metrics.scores(HAND_CM)["mean_dice"])
    assert results["mean_iou"] == pytest.approx(metrics.scores(HAND_CM)["mean_iou"])


def test_split_confusion_matrix_pools_every_batch_of_the_split():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(5, 4, 4, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=(5, 4, 4))
    y[0, 0] = 255  # ignored
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    pred = np.argmax(model.predict(x, verbose=0), -1)
    expected = np.zeros((3, 3), np.int64)
    for t, p in zip(y.ravel(), pred.ravel()):
        if t < 3:
            expected[t, p] += 1
    np.testing.assert_array_equal(metrics.split_confusion_matrix(model, batches, 3), expected)

"""Losses against hand-computed values and an independent NumPy implementation."""

import numpy as np
import pytest
import tensorflow as tf

from seglab.losses import CrossEntropy, Dice, Focal, Lovasz, Tversky, WeightedCrossEntropy, balancing_weights

C = 3
IGNORE = 255
CERTAIN = 50.0  # logit scale at which softmax is one-hot in float32 (exp(-50) ~ 2e-22)


def numpy_ce(labels, logits):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def numpy_dice_loss(labels, logits, squared=True, smooth=1.0, per_image=False, classes=None):
    """Milletari et al. 2016, eq. 1, written from the paper with loops over images and classes."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    groups = [(labels[b], probs[b]) for b in range(len(labels))] if per_image else [(labels, probs)]
    losses = []
    for lab, p in groups:
        dices = []
        for c in classes if classes is not None else range(p.shape[-1]):
            g = (lab == c).astype(np.float64)
            pc = p[..., c] * ((lab >= 0) & (lab < p.shape[-1]))
            den = (pc**2).sum() + (g**2).sum() if squared else pc.sum() + g.sum()
            dices.append((2 * (pc * g).sum() + smooth) / (den + smooth))
        losses.append(1 - np.mean(dices))
    return float(np.mean(losses))


def random_case(seed, shape=(2, 4, 5)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, C, size=shape), rng.normal(size=(*shape, C)).astype(np.float32)


def loss_and_gradient(loss_fn, labels, logits):
    logits = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, logits)
    return float(loss), tape.gradient(loss, logits).numpy()


ALL_LOSSES = [
    CrossEntropy(C, ignore_index=IGNORE),
    Dice(C, ignore_index=IGNORE),
    Dice(C, ignore_index=IGNORE, squared_denominator=False, smooth=0.0, per_image=True, ce_weight=1.0),
    WeightedCrossEntropy(C, class_weights=[2.0, 0.5, 3.0], ignore_index=IGNORE),
    Focal(C, gamma=2.0, ignore_index=IGNORE),
    Focal(C, gamma=0.5, alpha=[0.25, 1.0, 2.0], ignore_index=IGNORE),
    Tversky(C, alpha=0.3, beta=0.7, smooth=1.0, ignore_index=IGNORE),
    Lovasz(C, ignore_index=IGNORE),
]


# --- cross-entropy ---------------------------------------------------------------------


def test_cross_entropy_equals_numpy_mean_over_pixels():
    labels, logits = random_case(0)
    loss = CrossEntropy(num_classes=C)(labels, logits)
    assert float(loss) == pytest.approx(numpy_ce(labels, logits).mean(), rel=1e-5)


def test_labels_with_a_trailing_channel_axis_give_the_same_loss():
    labels, logits = random_case(2)
    for loss_fn in ALL_LOSSES:
        assert float(loss_fn(labels[..., None], logits)) == pytest.approx(float(loss_fn(labels, logits)), rel=1e-6)


def test_float16_logits_are_computed_in_float32():
    logits = np.full((1, 2, 2, 2), 30000.0, np.float16)
    loss = CrossEntropy(num_classes=2)(np.zeros((1, 2, 2), np.int32), logits)
    assert loss.dtype == tf.float32 and float(loss) == pytest.approx(np.log(2), rel=1e-3)


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=lambda f: f"{type(f).__name__}")
def test_ignored_pixels_change_neither_loss_nor_gradient(loss_fn):
    """The loss of an image with its top rows ignored equals the loss of the remaining rows alone;
    the ignored pixels get exactly zero gradient, whatever their logits."""
    labels, logits = random_case(1, shape=(2, 6, 4))
    ignored = labels.copy()
    ignored[:, :2] = IGNORE
    loss, grad = loss_and_gradient(loss_fn, ignored, logits)
    loss_kept, grad_kept = loss_and_gradient(loss_fn, labels[:, 2:], logits[:, 2:])
    assert loss == pytest.approx(loss_kept, rel=1e-5)
    assert np.all(grad[:, :2] == 0) and np.abs(grad[:, 2:]).sum() > 0
    np.testing.assert_allclose(grad[:, 2:], grad_kept, rtol=1e-4, atol=1e-7)
    scrambled = logits.copy()
    scrambled[:, :2] = 100 * np.random.default_rng(9).normal(size=scrambled[:, :2].shape)
    assert loss_fn(ignored, scrambled).numpy() == pytest.approx(loss, rel=1e-6)


def test_an_all_ignored_batch_gives_zero_loss_and_gradient_not_nan():
    labels = np.full((1, 3, 3), IGNORE)
    for loss_fn in ALL_LOSSES:
        loss, grad = loss_and_gradient(loss_fn, labels, np.ones((1, 3, 3, C), np.float32))
        assert loss == 0.0 and np.all(grad == 0), type(loss_fn).__name__


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=lambda f: f"{type(f).__name__}")
def test_gradients_are_finite_even_for_extreme_logits(loss_fn):
    labels, logits = random_case(3)
    _, grad = loss_and_gradient(loss_fn, labels, 1e4 * logits)
    assert np.all(np.isfinite(grad))


def numpy_softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_cross_entropy_gradients_equal_the_closed_form():
    """d/dz of mean_i w_{y_i} CE_i is w_{y_i} (softmax(z_i) - onehot(y_i)) / N."""
    labels, logits = random_case(10)
    residual = (numpy_softmax(logits.astype(np.float64)) - np.eye(C)[labels]) / labels.size
    _, grad = loss_and_gradient(CrossEntropy(C), labels, logits)
    np.testing.assert_allclose(grad, residual, rtol=1e-4, atol=1e-7)
    weights = np.array([0.5, 1.0, 4.0])
    _, grad = loss_and_gradient(WeightedCrossEntropy(C, class_weights=list(weights)), labels, logits)
    np.testing.assert_allclose(grad, weights[labels][..., None] * residual, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kwargs", [{}, {"squared_denominator": False, "per_image": True, "smooth": 0.0}])
def test_dice_gradient_equals_numpy_finite_differences(kwargs):
    labels, logits = random_case(11, shape=(2, 2, 3))
    _, grad = loss_and_gradient(Dice(C, **kwargs), labels, logits)
    numpy_kwargs = {"squared": kwargs.get("squared_denominator", True), "smooth": kwargs.get("smooth", 1.0),
                    "per_image": kwargs.get("per_image", False)}
    step, numeric = 1e-6, np.zeros(logits.shape)
    z = logits.astype(np.float64)
    for index in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (numpy_dice_loss(labels, up, **numpy_kwargs) - numpy_dice_loss(labels, down, **numpy_kwargs)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)


# --- Dice --------------------------------------------------------------------------------


def test_perfect_prediction_gives_dice_loss_zero():
    labels, _ = random_case(4)
    logits = CERTAIN * np.eye(C, dtype=np.float32)[labels]
    for kwargs in ({}, {"squared_denominator": False}, {"per_image": True}, {"smooth": 0.0}):
        assert float(Dice(C, **kwargs)(labels, logits)) == pytest.approx(0.0, abs=1e-6), kwargs


def test_soft_partial_overlap_matches_the_closed_form():
    """Two classes, one row of 4 pixels, labels [0, 0, 1, 1], P(class 0) = [.9, .6, .3, .2].
    Class 0: intersection .9 + .6 = 1.5; class 1: .7 + .8 = 1.5.
    Plain sums: sum(p_c) = 2, sum(g_c) = 2         -> D = 3 / 4 for both classes.
    Squares:    sum(p_0^2) = sum(p_1^2) = 1.30     -> D = 3 / 3.3 for both classes."""
    labels = np.array([[[0, 0, 1, 1]]])
    p0 = np.array([0.9, 0.6, 0.3, 0.2])
    logits = np.log(np.stack([p0, 1 - p0], -1))[None, None].astype(np.float32)
    assert float(Dice(2, squared_denominator=False, smooth=0.0)(labels, logits)) == pytest.approx(1 - 3 / 4, rel=1e-5)
    assert float(Dice(2, squared_denominator=True, smooth=0.0)(labels, logits)) == pytest.approx(1 - 3 / 3.3, rel=1e-5)


def test_hard_partial_overlap_matches_two_intersection_over_sum():
    """Confident predictions: D_c = 2 |A & B| / (|A| + |B|).  Target: 6 px of class 1 in a 4x4 of
    class 0; prediction: 4 of them plus 2 more.  Class 1: 2*4/(6+6); class 0: 2*8/(10+10)."""
    labels = np.zeros((1, 4, 4), int)
    labels[0, 0, :3] = labels[0, 1, :3] = 1
    pred = np.zeros_like(labels)
    pred[0, 0, 1:3] = pred[0, 1, 1:3] = pred[0, 2, :2] = 1
    logits = CERTAIN * np.eye(2, dtype=np.float32)[pred]
    expected = 1 - (2 * 4 / 12 + 2 * 8 / 20) / 2
    assert float(Dice(2, smooth=0.0)(labels, logits)) == pytest.approx(expected, rel=1e-6)
    background_left_out = Dice(2, smooth=0.0, include_background=False, background_index=0)
    assert float(background_left_out(labels, logits)) == pytest.approx(1 - 2 * 4 / 12, rel=1e-6)


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_equals_numpy_implementation(squared, per_image, smooth):
    labels, logits = random_case(5)
    loss = Dice(C, squared_denominator=squared, per_image=per_image, smooth=smooth)(labels, logits)
    assert float(loss) == pytest.approx(numpy_dice_loss(labels, logits, squared, smooth, per_image), rel=1e-5)


def test_background_index_chooses_the_class_left_out():
    labels, logits = random_case(6)
    for background in range(C):
        loss = Dice(C, include_background=False, background_index=background)(labels, logits)
        others = [c for c in range(C) if c != background]
        assert float(loss) == pytest.approx(numpy_dice_loss(labels, logits, classes=others), rel=1e-5)


def test_dice_plus_cross_entropy_adds_the_weighted_cross_entropy():
    labels, logits = random_case(7)
    loss = Dice(C, ce_weight=0.5)(labels, logits)
    assert float(loss) == pytest.approx(numpy_dice_loss(labels, logits) + 0.5 * numpy_ce(labels, logits).mean(), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"smooth": 0.0}, {"per_image": True, "smooth": 0.0}, {"squared_denominator": False}])
def test_class_absent_from_target_and_prediction_gives_no_nan_and_no_loss(kwargs):
    """Only classes 0 and 1 occur and are predicted perfectly; class 2 is nowhere."""
    labels = np.array([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])  # the second image has class 0 only
    logits = CERTAIN * np.eye(C, dtype=np.float32)[labels]
    loss, grad = loss_and_gradient(Dice(C, **kwargs), labels, logits)
    assert loss == pytest.approx(0.0, abs=1e-6) and np.all(np.isfinite(grad))


def test_class_absent_from_target_costs_what_is_predicted_of_it():
    """Class 2 is absent from the target but predicted with probability q on one pixel of four:
    D_2 = smooth / (q^2 + smooth), the other two classes stay close to perfect."""
    labels = np.array([[[0, 1, 0, 1]]])
    q = 0.5
    probs = np.eye(C)[labels] * 0.999998 + 1e-6
    probs[0, 0, 0] = [1 - q - 1e-6, 1e-6, q]
    loss = float(Dice(C, smooth=1.0)(labels, np.log(probs).astype(np.float32)))
    assert loss == pytest.approx(numpy_dice_loss(labels, np.log(probs)), rel=1e-5)
    assert loss > (1 - 1 / (q**2 + 1)) / C  # the false positive is paid for


# --- weighted cross-entropy ----------------------------------------------------------------


def test_equal_class_weights_scale_the_cross_entropy():
    labels, logits = random_case(8)
    ce = float(CrossEntropy(C)(labels, logits))
    assert float(WeightedCrossEntropy(C, class_weights=[1.0] * C)(labels, logits)) == pytest.approx(ce, rel=1e-6)
    assert float(WeightedCrossEntropy(C, class_weights=[2.0] * C)(labels, logits)) == pytest.approx(2 * ce, rel=1e-6)


def test_class_weights_weigh_each_pixel_by_its_true_class():
    labels, logits = random_case(9)
    weights = np.array([0.5, 1.0, 4.0])
    loss = WeightedCrossEntropy(C, class_weights=list(weights))(labels, logits)
    assert float(loss) == pytest.approx((weights[labels] * numpy_ce(labels, logits)).mean(), rel=1e-5)
    # A zero weight removes a class's pixels from the sum but not from the count (mean over labelled pixels).
    only_class_2 = WeightedCrossEntropy(C, class_weights=[0.0, 0.0, 1.0])(labels, logits)
    assert float(only_class_2) == pytest.approx(np.where(labels == 2, numpy_ce(labels, logits), 0).mean(), rel=1e-5)


def test_weighted_cross_entropy_rejects_unresolved_weights():
    # (wrong counts or signs are the schema's: test_loss_schema_rejects_bad_values_naming_the_key)
    with pytest.raises(ValueError, match="training split"):
        WeightedCrossEntropy(C, class_weights="median_frequency")


# --- class-balancing weights ---------------------------------------------------------------


def numpy_median_frequency(masks, num_classes):
    """Eigen & Fergus 2015: freq(c) = pixels of c / pixels of the images where c is present;
    weight = median(freq) / freq(c)."""
    freq = {}
    for c in range(num_classes):
        images_with_c = [m for m in masks if (m == c).any()]
        if images_with_c:
            freq[c] = sum((m == c).sum() for m in images_with_c) / sum(m.size for m in images_with_c)
    median = np.median(list(freq.values()))
    return np.array([median / freq[c] if c in freq else 0.0 for c in range(num_classes)])


MASKS = np.array([
    [[0, 0, 1, 1], [1, 1, 1, 1]],  # classes 0 and 1
    [[1, 1, 1, 1], [1, 1, 1, 2]],  # classes 1 and 2
    [[1, 1, 1, 1], [1, 1, 1, 1]],  # class 1 only
])  # class 3 never occurs


def counts_of(masks, num_classes):
    pixels = np.array([(masks == c).sum() for c in range(num_classes)])
    image_pixels = np.array([sum(m.size for m in masks if (m == c).any()) for c in range(num_classes)])
    return pixels, image_pixels


def test_median_frequency_matches_eigen_and_fergus():
    weights = balancing_weights("median_frequency", *counts_of(MASKS, 4))
    np.testing.assert_allclose(weights, numpy_median_frequency(MASKS, 4))
    # By hand: freq = [2/8, 21/24, 1/8]; median 2/8 -> weights [1, 2/7, 2, 0].
    np.testing.assert_allclose(weights, [1.0, 2 / 7, 2.0, 0.0])


def test_inverse_frequency_weights_average_to_one_over_pixels():
    pixels, image_pixels = counts_of(MASKS, 4)
    weights = balancing_weights("inverse_frequency", pixels, image_pixels)
    # 24 pixels, 3 classes occur: w_c = 24 / (3 n_c) with n = [2, 21, 1].
    np.testing.assert_allclose(weights, [4.0, 24 / 63, 8.0, 0.0])
    assert (weights * pixels).sum() / pixels.sum() == pytest.approx(1.0)


# --- focal, Tversky, Lovasz: NumPy written from the papers, over the labelled pixels only -----------------


def labelled_pixels(labels, logits):
    """The labelled pixels' labels (N,) and float64 softmax probabilities (N, C), ignored pixels dropped."""
    keep = (labels >= 0) & (labels < logits.shape[-1])
    return labels[keep], numpy_softmax(logits.astype(np.float64))[keep]


def numpy_focal(labels, logits, gamma, alpha=None):
    """Lin et al. 2017, eq. 5: mean of -alpha_t (1 - p_t)^gamma log p_t."""
    y, p = labelled_pixels(labels, logits)
    p_t = p[np.arange(len(y)), y]
    a_t = np.ones(len(y)) if alpha is None else np.asarray(alpha)[y]
    return float(np.mean(-a_t * (1 - p_t) ** gamma * np.log(p_t))) if len(y) else 0.0


def numpy_tversky(labels, logits, alpha, beta, smooth):
    """Salehi et al. 2017, eq. 3, with a loop over classes."""
    y, p = labelled_pixels(labels, logits)
    indices = []
    for c in range(logits.shape[-1]):
        g = (y == c).astype(np.float64)
        tp, fp, fn = (p[:, c] * g).sum(), (p[:, c] * (1 - g)).sum(), ((1 - p[:, c]) * g).sum()
        indices.append((tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
    return 1 - float(np.mean(indices))


def numpy_lovasz(labels, logits):
    """Berman et al. 2018, Algorithm 1 (lovasz_softmax_flat, classes='present') with a Python loop."""
    y, p = labelled_pixels(labels, logits)
    losses = []
    for c in range(logits.shape[-1]):
        g = (y == c).astype(np.float64)
        if g.sum() == 0:
            continue
        errors = np.abs(g - p[:, c])
        order = np.argsort(-errors, kind="stable")
        g_sorted = g[order]
        jaccard = np.empty(len(g))
        for i in range(len(g)):  # J(i): Jaccard loss of predicting the first i + 1 pixels as class c
            intersection = g.sum() - g_sorted[: i + 1].sum()
            union = g.sum() + (1 - g_sorted[: i + 1]).sum()
            jaccard[i] = 1 - intersection / union
        weights = np.diff(jaccard, prepend=0.0)
        losses.append(float(errors[order] @ weights))
    return float(np.mean(losses)) if losses else 0.0


def with_ignored(labels, seed=5):
    ignored = labels.copy()
    ignored[np.random.default_rng(seed).random(labels.shape) < 0.3] = IGNORE
    return ignored


NEW_LOSSES = [
    (Focal(C, gamma=2.0, ignore_index=IGNORE), lambda y, z: numpy_focal(y, z, 2.0)),
    (Focal(C, gamma=0.0, ignore_index=IGNORE), lambda y, z: numpy_focal(y, z, 0.0)),
    (Focal(C, gamma=0.5, alpha=[0.25, 1.0, 2.0], ignore_index=IGNORE), lambda y, z: numpy_focal(y, z, 0.5, [0.25, 1.0, 2.0])),
    (Tversky(C, alpha=0.3, beta=0.7, smooth=1.0, ignore_index=IGNORE), lambda y, z: numpy_tversky(y, z, 0.3, 0.7, 1.0)),
    (Tversky(C, alpha=2.0, beta=0.0, smooth=1e-3, ignore_index=IGNORE), lambda y, z: numpy_tversky(y, z, 2.0, 0.0, 1e-3)),
    (Lovasz(C, ignore_index=IGNORE), numpy_lovasz),
]
NEW_IDS = ["focal-g2", "focal-g0", "focal-alpha", "tversky", "tversky-fp-only", "lovasz"]


@pytest.mark.parametrize("loss_fn,reference", NEW_LOSSES, ids=NEW_IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_losses_equal_the_numpy_references_with_ignored_pixels(loss_fn, reference, seed):
    labels, logits = random_case(seed, shape=(3, 5, 6))
    labels = with_ignored(labels, seed)
    assert (labels == IGNORE).any() and (labels != IGNORE).any()
    assert float(loss_fn(labels, 3 * logits)) == pytest.approx(reference(labels, 3 * logits), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("loss_fn,reference", NEW_LOSSES, ids=NEW_IDS)
def test_new_losses_gradients_equal_numpy_finite_differences(loss_fn, reference):
    """Lovasz is piecewise linear in the errors: away from ties its gradient is the sorted weights'."""
    labels, logits = random_case(12, shape=(2, 2, 3))
    labels = with_ignored(labels, 1)
    _, grad = loss_and_gradient(loss_fn, labels, logits)
    step, numeric, z = 1e-6, np.zeros(logits.shape), logits.astype(np.float64)
    for index in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (reference(labels, up) - reference(labels, down)) / (2 * step)
    assert np.abs(numeric).sum() > 0
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy_and_gamma_down_weights_easy_pixels():
    labels, logits = random_case(6)
    assert float(Focal(C, gamma=0.0)(labels, logits)) == pytest.approx(float(CrossEntropy(C)(labels, logits)), rel=1e-6)
    easy = np.where(np.eye(C, dtype=bool)[labels], 4.0, 0.0).astype(np.float32)  # p_t ~ 0.96 everywhere
    assert float(Focal(C, gamma=2.0)(labels, easy)) < 0.01 * float(CrossEntropy(C)(labels, easy))


def test_tversky_with_equal_halves_is_soft_dice_of_plain_sums():
    labels, logits = random_case(7)
    tversky = Tversky(C, alpha=0.5, beta=0.5, smooth=1.0)(labels, logits)
    dice = Dice(C, squared_denominator=False, smooth=2.0)(labels, logits)  # (2TP + 2s) / (2TP + FP + FN + 2s)
    assert float(tversky) == pytest.approx(float(dice), rel=1e-6)


def test_lovasz_of_a_perfect_prediction_is_zero_and_of_hard_mistakes_is_the_jaccard_loss():
    labels, _ = random_case(8)
    perfect = (CERTAIN * np.eye(C)[labels]).astype(np.float32)
    assert float(Lovasz(C)(labels, perfect)) == pytest.approx(0.0, abs=1e-6)
    wrong = labels.copy()
    wrong[0] = (labels[0] + 1) % C  # the first image predicted as the next class
    hard = (CERTAIN * np.eye(C)[wrong]).astype(np.float32)
    # With one-hot predictions the Lovasz extension equals the Jaccard loss 1 - IoU_c (Berman et al., sec. 3.1).
    iou = [((wrong == c) & (labels == c)).sum() / ((wrong == c) | (labels == c)).sum() for c in range(C) if (labels == c).any()]
    assert float(Lovasz(C)(labels, hard)) == pytest.approx(1 - np.mean(iou), rel=1e-5)


@pytest.mark.parametrize("loss_fn", [f for f, _ in NEW_LOSSES], ids=NEW_IDS)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_new_losses_stay_finite_on_half_precision_logits(loss_fn, dtype):
    """Mixed precision hands the loss float16/bfloat16 logits: computed in float32, finite even where
    float16 saturates (logits of +-6e4, softmax exactly one-hot)."""
    labels, logits = random_case(9)
    labels = with_ignored(labels)
    for scale in (1.0, 6e4 / np.abs(logits).max()):  # float16's largest is 65504
        half = tf.Variable(tf.cast(scale * logits, dtype))
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, half)
        grad = tape.gradient(loss, half)
        assert loss.dtype == tf.float32 and np.isfinite(float(loss))
        assert np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))
    assert float(loss_fn(labels, tf.cast(logits, dtype))) == pytest.approx(float(loss_fn(labels, logits)), rel=2e-2, abs=1e-3)


def test_lovasz_backward_pass_has_no_op_without_a_deterministic_gpu_kernel():
    """The determinism preflight's own check on a compiled model with the Lovasz loss: no sort, gather or
    scatter gradient in the traced training step."""
    import keras

    from seglab.engine import determinism

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(C, 1)(inputs))
    model.compile(optimizer="adam", loss=Lovasz(C, ignore_index=IGNORE))
    ops = {op for op, _, _ in determinism.training_step_ops(model, 8)}
    assert "TopKV2" in ops  # the sort is in the step (forward only)
    assert determinism.find(model, 8) == []
    assert not ops & {"UnsortedSegmentSum", "ScatterNd", "TensorScatterAdd"}


# --- through the command line ----------------------------------------------------------------


@pytest.mark.slow
def test_cli_dice_and_weighted_log_weights_and_the_final_confusion_matrix(tmp_path):
    """One sweep, two tiny one-epoch runs: `loss=weighted` logs the median-frequency weights of the
    training split (checked against Eigen & Fergus computed here on the same synthetic masks), and
    both runs log the final validation confusion matrix, whose scores are the last logged metrics."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from seglab import metrics
    from seglab.data import shapes
    from tests.conftest import TINY, run_cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli("--multirun", "loss=dice,weighted", *TINY, "data.source.train_size=16", "data.source.val_size=8", "trainer.epochs=1",
            "trainer.mask_samples=0", "tracking.log_model=false", f"tracking.uri={uri}", cwd=tmp_path)
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    # the sweep's jobs (children of its parent run), keyed by the loss they ran
    runs = {r.data.params["loss._target_"].rsplit(".", 1)[-1]: r for r in found if "mlflow.parentRunId" in r.data.tags}
    assert sorted(runs) == ["Dice", "WeightedCrossEntropy"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    runs = {"unet-dice-shapes": runs["Dice"], "unet-weighted-shapes": runs["WeightedCrossEntropy"]}

    _, train_masks = shapes.generate(16, 32, seed=0)  # the train stream of data.source.seed=0
    expected = numpy_median_frequency(train_masks, 3)
    params = runs["unet-weighted-shapes"].data.params
    assert params["loss.class_weights"] == "median_frequency"
    logged = [float(params[f"loss.class_weight.{name}"]) for name in ("object", "background", "boundary")]
    np.testing.assert_allclose(logged, expected, rtol=1e-9)
    assert "loss.class_weight.object" not in runs["unet-dice-shapes"].data.params

    for run in runs.values():
        rid = run.info.run_id
        artifacts = {a.path for a in client.list_artifacts(rid)}
        assert {"confusion_matrix.png", "confusion_matrix.json"} <= artifacts
        saved = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/confusion_matrix.json"))
        cm = np.array(saved["counts"])
        assert saved["class_names"] == ["object", "background", "boundary"] and cm.sum() == 8 * 32 * 32
        final = metrics.scores(cm)
        assert run.data.metrics["val_mean_iou"] == pytest.approx(final["mean_iou"], rel=1e-5)
        assert run.data.metrics["val_dice_boundary"] == pytest.approx(final["dice"][2], rel=1e-5)


@pytest.mark.slow
def test_cli_focal_tversky_and_lovasz_train(tmp_path):
    """One sweep, three tiny runs (deterministic, float32; half precision: tests/test_precision.py): each
    finishes, its training loss falls from the first epoch to the last, and its logged loss is the one asked."""
    from mlflow import MlflowClient

    from tests.conftest import TINY, run_cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli("--multirun", "loss=focal,tversky,lovasz", *TINY, "trainer.epochs=3", "trainer.mask_samples=0",
            "tracking.log_model=false", f"tracking.uri={uri}", cwd=tmp_path, timeout=900)
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    runs = {r.data.params["loss._target_"]: r for r in found if "mlflow.parentRunId" in r.data.tags}
    assert sorted(runs) == ["seglab.losses.Focal", "seglab.losses.Lovasz", "seglab.losses.Tversky"]
    for name, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.params["deterministic"] == "True", name
        history = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
        assert len(history) == 3 and np.all(np.isfinite(history)) and history[-1] < history[0], (name, history)


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("loss=dice", "loss.smooth=-1"), "loss.smooth"),
        (("loss=dice", "loss.ce_weight=-0.5"), "loss.ce_weight"),
        (("loss=dice", "loss.include_background=false", "data.background_index=null"), "loss.include_background"),
        (("loss=dice", "loss.background_index=3"), "loss.background_index"),
        (("data.background_index=3",), "data.background_index"),
        (("loss=weighted", "loss.class_weights=[1.0,2.0]"), "loss.class_weights"),
        (("loss=weighted", "loss.class_weights=[1.0,-2.0,1.0]"), "loss.class_weights"),
        (("loss=weighted", "loss.class_weights=median"), "loss.class_weights"),
        (("loss=focal", "loss.gamma=-1"), "loss.gamma"),
        (("loss=focal", "loss.alpha=[1.0,2.0]"), "loss.alpha"),
        (("loss=focal", "loss.alpha=[1.0,-2.0,1.0]"), "loss.alpha"),
        (("loss=tversky", "loss.alpha=-0.1"), "loss.alpha"),
        (("loss=tversky", "loss.beta=-0.1"), "loss.beta"),
        (("loss=tversky", "loss.smooth=0"), "loss.smooth"),
    ],
)
def test_loss_schema_rejects_bad_values_naming_the_key(compose_cfg, overrides, key):
    from seglab.config import schema

    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.")):
        schema.validate(compose_cfg(*overrides))


def test_loss_options_build_from_the_composed_config(compose_cfg):
    from hydra.utils import instantiate

    dice = instantiate(compose_cfg("loss=dice", "loss.include_background=false").loss, num_classes=3)
    assert isinstance(dice, Dice) and dice.classes == [0, 2]  # shapes: background is class 1
    weighted = instantiate(compose_cfg("loss=weighted", "loss.class_weights=[2.0,2.0,1.0]").loss, num_classes=3)
    assert isinstance(weighted, WeightedCrossEntropy) and weighted.class_weights == [2.0, 2.0, 1.0]
    focal = instantiate(compose_cfg("loss=focal", "loss.alpha=[1.0,2.0,3.0]").loss, num_classes=3)
    assert isinstance(focal, Focal) and (focal.gamma, focal.alpha) == (2.0, [1.0, 2.0, 3.0])
    tversky = instantiate(compose_cfg("loss=tversky").loss, num_classes=3)
    assert isinstance(tversky, Tversky) and (tversky.alpha, tversky.beta, tversky.smooth) == (0.3, 0.7, 1.0)
    assert isinstance(instantiate(compose_cfg("loss=lovasz", "data.ignore_index=255").loss, num_classes=3), Lovasz)

"""Losses on integer label maps `(B, H, W)` or `(B, H, W, 1)` and logits `(B, H, W, C)`.

Every loss is computed in float32 (whatever the model's compute dtype) and returns one scalar:
its mean over the labelled pixels.  A pixel is labelled when its label is in [0, C); the data
set's `ignore_index` (e.g. 255, COCO crowd regions) lies outside that range, so such pixels
contribute nothing to the loss or its gradient, exactly as the metrics leave them out.

Cross-entropy is written as `-sum(onehot(label) * log_softmax(logits))`: one-hot products and
reductions have deterministic kernels on every device.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _labels_and_logits(y_true, y_pred, num_classes: int):
    """int32 labels (B, H, W), float32 logits (B, H, W, C), one-hot targets (all zero where unlabelled)
    and the float32 mask of labelled pixels (B, H, W)."""
    logits = tf.cast(y_pred, tf.float32)
    labels = tf.cast(y_true, tf.int32)
    if labels.shape.rank == logits.shape.rank:
        labels = labels[..., 0]
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)  # labels outside [0, C) -> zero rows
    return labels, logits, onehot, tf.reduce_sum(onehot, -1)


def _cross_entropy(logits, onehot):
    """Per-pixel cross-entropy (B, H, W); exactly 0, with zero gradient, where onehot is all zero."""
    return -tf.reduce_sum(onehot * tf.nn.log_softmax(logits, axis=-1), -1)


def _mean(per_pixel, labelled):
    """Mean over the labelled pixels (0 when there are none)."""
    return tf.reduce_sum(per_pixel * labelled) / tf.maximum(tf.reduce_sum(labelled), 1.0)


class _ScalarLoss(keras.losses.Loss):
    """A loss whose `call` already reduces to one scalar (the mean over labelled pixels).

    Under a tf.distribute strategy with R replicas each replica's loss must be divided by R, since
    the replicas' gradients are summed; Keras does it only when it reduces per-example values itself
    (`keras.losses.Loss` leaves a scalar alone), so these losses do it here, exactly as Keras would,
    and Keras multiplies it back for the logged `loss`.  The result is the mean of the replicas' means:
    the global mean when every replica has as many labelled pixels (no ignore_index pixels).
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        loss = super().__call__(y_true, y_pred, sample_weight)
        return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


class CrossEntropy(_ScalarLoss):
    """Sparse categorical cross-entropy from logits, averaged over the labelled pixels.

    Pixels whose label equals `ignore_index` (or lies anywhere outside [0, C)) contribute nothing
    to the loss or its gradient.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, name: str = "cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def call(self, y_true, y_pred):
        _, logits, onehot, labelled = _labels_and_logits(y_true, y_pred, self.num_classes)
        return _mean(_cross_entropy(logits, onehot), labelled)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index}


class Dice(_ScalarLoss):
    """Soft Dice loss (Milletari, Navab, Ahmadi 2016, V-Net, eq. 1), optionally plus cross-entropy.

    For each class c, on softmax probabilities p and one-hot targets g over the labelled pixels,

        D_c = (2 sum(p_c g_c) + smooth) / (sum(p_c^2) + sum(g_c^2) + smooth)   squared_denominator
        D_c = (2 sum(p_c g_c) + smooth) / (sum(p_c)   + sum(g_c)   + smooth)   otherwise

    summed over each image (`per_image`) or over the whole batch, and the loss is
    `1 - mean_c D_c` (+ `ce_weight` * mean cross-entropy).  A class absent from both target and
    prediction has D_c = 1 (nothing to find, nothing found): no loss and, even with `smooth=0`,
    no NaN.  With `smooth > 0` a class absent from the target costs only what is predicted of it
    (D_c = smooth / (sum(p_c^2) + smooth)); with `smooth=0` any probability on it costs the full
    D_c = 0.  `include_background=False` leaves class `background_index` out of the mean.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        squared_denominator: bool = True,
        include_background: bool = True,
        background_index: int | None = None,
        smooth: float = 1.0,
        per_image: bool = False,
        ce_weight: float = 0.0,
        name: str = "dice",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)  # the ranges of these values are checked by seglab/config/loss.py (DiceConfig)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.squared_denominator, self.smooth, self.per_image, self.ce_weight = squared_denominator, smooth, per_image, ce_weight
        self.include_background, self.background_index = include_background, background_index
        self.classes = [c for c in range(num_classes) if include_background or c != background_index]

    def call(self, y_true, y_pred):
        _, logits, onehot, labelled = _labels_and_logits(y_true, y_pred, self.num_classes)
        probs = tf.nn.softmax(logits, axis=-1) * labelled[..., None]
        axes = [1, 2] if self.per_image else [0, 1, 2]
        intersection = tf.reduce_sum(probs * onehot, axes)
        if self.squared_denominator:
            denominator = tf.reduce_sum(tf.square(probs), axes) + tf.reduce_sum(tf.square(onehot), axes)
        else:
            denominator = tf.reduce_sum(probs, axes) + tf.reduce_sum(onehot, axes)
        denominator += self.smooth
        # The denominator is 0 only for a class absent from target and prediction (with smooth=0):
        # perfect agreement.  Dividing by 1 there keeps the unselected branch, and so the gradient, finite.
        occurs = denominator > 0
        safe = tf.where(occurs, denominator, tf.ones_like(denominator))
        dice = tf.where(occurs, (2 * intersection + self.smooth) / safe, tf.ones_like(denominator))
        # A 0/1 class mask rather than tf.gather, whose gradient is a scatter (not deterministic on every GPU).
        included = tf.constant([float(c in self.classes) for c in range(self.num_classes)])
        loss = 1.0 - tf.reduce_mean(tf.reduce_sum(dice * included, -1) / len(self.classes))
        if self.ce_weight:
            loss += self.ce_weight * _mean(_cross_entropy(logits, onehot), labelled)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes, "ignore_index": self.ignore_index,
            "squared_denominator": self.squared_denominator, "include_background": self.include_background,
            "background_index": self.background_index, "smooth": self.smooth, "per_image": self.per_image,
            "ce_weight": self.ce_weight,
        }


class WeightedCrossEntropy(_ScalarLoss):
    """Class-weighted cross-entropy through per-pixel weights: mean over labelled pixels of
    `class_weights[label] * CE` (the weighted energy of Ronneberger et al. 2015, U-Net, eq. 1).

    Keras' `class_weight` does not take 3-D targets, hence a loss.  Weights of 2 for every class
    double the cross-entropy.  `class_weights` are given, or computed before training from the
    training split by `balancing_weights` (train.py passes them in).
    """

    def __init__(self, num_classes: int, class_weights, ignore_index: int | None = None, name: str = "weighted_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        # The count and signs of the weights are checked by seglab/config/loss.py; a balancing method's name is
        # valid config, but only seglab.train can turn it into numbers (it needs the training split).
        if isinstance(class_weights, str):
            raise ValueError(
                f"class_weights={class_weights!r} must be resolved to numbers from the training split's class "
                "counts first (seglab.losses.balancing_weights; seglab.train does it)"
            )
        self.num_classes, self.ignore_index, self.class_weights = num_classes, ignore_index, [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        _, logits, onehot, labelled = _labels_and_logits(y_true, y_pred, self.num_classes)
        pixel_weights = tf.reduce_sum(onehot * tf.constant(self.class_weights, tf.float32), -1)  # 0 where unlabelled
        return _mean(pixel_weights * _cross_entropy(logits, onehot), labelled)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "class_weights": self.class_weights}


class Focal(_ScalarLoss):
    """Focal loss (Lin, Goyal, Girshick, He, Dollar 2017, RetinaNet, eq. 5), multi-class: mean over the
    labelled pixels of

        FL = -alpha_t (1 - p_t)^gamma log p_t,    p_t = softmax(logits)[label]

    with `alpha_t = alpha[label]` (`alpha` null: 1).  gamma = 0 and no alpha is cross-entropy; larger
    gamma down-weights the pixels already classified well (p_t near 1).
    """

    def __init__(self, num_classes: int, gamma: float, alpha=None, ignore_index: int | None = None, name: str = "focal", **kwargs):
        super().__init__(name=name, **kwargs)  # ranges and the count of alpha: seglab/config/loss.py (FocalConfig)
        self.num_classes, self.ignore_index, self.gamma = num_classes, ignore_index, float(gamma)
        self.alpha = None if alpha is None else [float(a) for a in alpha]

    def call(self, y_true, y_pred):
        _, logits, onehot, labelled = _labels_and_logits(y_true, y_pred, self.num_classes)
        log_pt = -_cross_entropy(logits, onehot)  # 0 where unlabelled
        # 1 - p_t as -expm1(log p_t): exact near p_t = 1.  The floor keeps (1 - p_t)^gamma's gradient finite
        # where 1 - p_t is 0 (unlabelled pixels, certain predictions); what it adds is below float32's resolution.
        modulating = tf.pow(tf.maximum(-tf.math.expm1(log_pt), np.finfo(np.float32).tiny), self.gamma)
        per_pixel = -modulating * log_pt
        if self.alpha is not None:
            per_pixel *= tf.reduce_sum(onehot * tf.constant(self.alpha, tf.float32), -1)
        return _mean(per_pixel, labelled)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "gamma": self.gamma, "alpha": self.alpha}


class Tversky(_ScalarLoss):
    """Tversky loss (Salehi, Erdogmus, Gholipour 2017, eq. 3): for each class c, with soft counts of the
    softmax probabilities p against the one-hot targets g over all labelled pixels of the batch,

        TP_c = sum(p_c g_c),  FP_c = sum(p_c (1 - g_c)),  FN_c = sum((1 - p_c) g_c)
        TI_c = (TP_c + smooth) / (TP_c + alpha FP_c + beta FN_c + smooth)

    and the loss is `1 - mean_c TI_c` over all C classes.  alpha = beta = 0.5 is the soft Dice of
    sum(p) + sum(g); beta > alpha weighs missed pixels more than false alarms (recall over precision).
    """

    def __init__(self, num_classes: int, alpha: float, beta: float, smooth: float, ignore_index: int | None = None,
                 name: str = "tversky", **kwargs):
        super().__init__(name=name, **kwargs)  # ranges: seglab/config/loss.py (TverskyConfig); smooth > 0 keeps TI finite
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)

    def call(self, y_true, y_pred):
        _, logits, onehot, labelled = _labels_and_logits(y_true, y_pred, self.num_classes)
        probs = tf.nn.softmax(logits, axis=-1) * labelled[..., None]
        true_positive = tf.reduce_sum(probs * onehot, [0, 1, 2])
        false_positive = tf.reduce_sum(probs, [0, 1, 2]) - true_positive
        false_negative = tf.reduce_sum(onehot, [0, 1, 2]) - true_positive
        index = (true_positive + self.smooth) / (
            true_positive + self.alpha * false_positive + self.beta * false_negative + self.smooth)
        return 1.0 - tf.reduce_mean(index)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "alpha": self.alpha, "beta": self.beta, "smooth": self.smooth}


class Lovasz(_ScalarLoss):
    """Lovasz-softmax loss (Berman, Rannen Triki, Blaschko 2018, eq. 8 and Algorithm 1), over all labelled
    pixels of the batch: for each class c with errors m_c = |g_c - p_c| sorted in decreasing order (pi),

        loss_c = sum_i m_c[pi_i] * (J_c(i) - J_c(i - 1)),
        J_c(i) = 1 - (G_c - cumsum(g_c[pi])_i) / (G_c + cumsum(1 - g_c[pi])_i),  G_c = sum(g_c)

    (the Lovasz extension of the Jaccard loss), averaged over the classes present in the labels
    (0 when no pixel is labelled).

    Unlabelled pixels are sorted last (error -1) and weigh 0: the prefix sums of the labelled ones are
    those of the labelled pixels alone.  The gradient is taken through the errors only, each pixel's
    weight J_c(i) - J_c(i - 1) held fixed (the loss is piecewise linear in m_c): no sort or gather in
    the backward pass, whose GPU kernels are scatters, so the loss is deterministic on GPUs too.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, name: str = "lovasz", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def call(self, y_true, y_pred):
        _, logits, onehot, labelled = _labels_and_logits(y_true, y_pred, self.num_classes)
        # (C, N): one row per class over the batch's pixels, the sort along the last axis.
        truth = tf.transpose(tf.reshape(onehot, [-1, self.num_classes]))
        valid = tf.reshape(labelled, [1, -1])
        errors = tf.abs(truth - tf.transpose(tf.reshape(tf.nn.softmax(logits, axis=-1), [-1, self.num_classes]))) * valid
        order = tf.argsort(tf.stop_gradient(errors - (1.0 - valid)), axis=-1, direction="DESCENDING", stable=True)
        weights = tf.stop_gradient(_lovasz_weights(tf.gather(truth, order, batch_dims=1), tf.gather(valid[0], order)))
        # Each pixel's weight back in its own place: the inverse permutation, itself an argsort.
        per_class = tf.reduce_sum(errors * tf.gather(weights, tf.argsort(order, axis=-1), batch_dims=1), -1)
        present = tf.cast(tf.reduce_sum(truth, -1) > 0, tf.float32)
        return tf.reduce_sum(per_class * present) / tf.maximum(tf.reduce_sum(present), 1.0)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index}


def _lovasz_weights(sorted_truth, sorted_valid):
    """J_c(i) - J_c(i - 1) of Berman et al.'s Algorithm 1 for targets sorted by decreasing error, (C, N);
    0 at the unlabelled pixels (sorted last)."""
    total = tf.reduce_sum(sorted_truth, -1, keepdims=True)
    intersection = total - tf.cumsum(sorted_truth, -1)
    union = total + tf.cumsum((1.0 - sorted_truth) * sorted_valid, -1)
    jaccard = 1.0 - intersection / tf.maximum(union, 1.0)  # union >= 1 from the first labelled pixel on
    return tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], -1) * sorted_valid


def balancing_weights(method: str, pixels, image_pixels) -> np.ndarray:
    """Class weights from the training split's counts (see `seglab.data.statistics.class_counts`).

    `pixels[c]`: pixels labelled c; `image_pixels[c]`: labelled pixels of the images containing c.

    - `inverse_frequency`: w_c = N / (C' n_c), N all labelled pixels, C' the classes that occur;
      the mean weight over pixels is then 1, so the loss keeps the scale of plain cross-entropy.
    - `median_frequency` (Eigen & Fergus 2015, sec. 4.1): w_c = median(f) / f_c with
      f_c = pixels[c] / image_pixels[c], the frequency of c in the images where it occurs.

    A class with no training pixels gets weight 0: there is no pixel for its weight to scale.
    """
    pixels = np.asarray(pixels, np.float64)
    image_pixels = np.asarray(image_pixels, np.float64)
    present = pixels > 0
    if not present.any():
        raise ValueError("the training split has no labelled pixels: cannot compute class frequencies")
    weights = np.zeros_like(pixels)
    if method == "inverse_frequency":
        weights[present] = pixels.sum() / (present.sum() * pixels[present])
    elif method == "median_frequency":
        frequency = pixels[present] / image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    else:
        raise ValueError(f"class balancing {method!r} is unknown: use inverse_frequency, median_frequency or a list of weights")
    return weights

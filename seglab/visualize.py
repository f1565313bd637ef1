"""Pictures of predictions: a grid of input | true mask | predicted mask over the input."""

from __future__ import annotations

import numpy as np

# A fixed, distinguishable palette (class i -> PALETTE[i % len]); background-like classes are not special.
PALETTE = np.array(
    [[230, 25, 75], [60, 60, 60], [255, 225, 25], [0, 130, 200], [60, 180, 75], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]],
    dtype=np.uint8,
)
OVERLAY_ALPHA = 0.5
SEPARATOR_PX = 2


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 colours; labels outside the palette wrap around."""
    return PALETTE[np.mod(labels, len(PALETTE))]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the label colours over a float [0, 1] or uint8 RGB image."""
    rgb = image.astype(np.float32) * (255.0 if image.dtype != np.uint8 else 1.0)
    return ((1 - alpha) * rgb + alpha * colorize(labels)).clip(0, 255).astype(np.uint8)


def mask_grid(images: np.ndarray, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One row per sample: input | true mask | predicted mask over the input (uint8 RGB)."""
    rows = []
    for image, t, p in zip(images, true, pred):
        rgb = (np.asarray(image, np.float32) * 255).clip(0, 255).astype(np.uint8)
        gap = np.full((rgb.shape[0], SEPARATOR_PX, 3), 255, np.uint8)
        rows.append(np.concatenate([rgb, gap, colorize(t), gap, overlay(rgb, p)], axis=1))
        rows.append(np.full((SEPARATOR_PX, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def confusion_figure(cm: np.ndarray, class_names: list[str], title: str = "confusion matrix"):
    """A matplotlib figure of a confusion matrix (rows true, columns predicted): colour is the
    share of each true class, the text the pixel count, so rare classes stay readable."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, np.int64)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = 1.2 + 0.9 * len(class_names)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="share of the true class")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in ticks:
        for j in ticks:
            ax.text(j, i, f"{shares[i, j]:.2f}\n{cm[i, j]:,}", ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig

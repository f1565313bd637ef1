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

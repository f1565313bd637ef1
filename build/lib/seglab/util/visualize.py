"""Pictures of predictions: a grid of input | true mask | predicted mask over the input [| errors]."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# A fixed, distinguishable palette (class i -> PALETTE[i % len]); background-like classes are not special.
PALETTE = np.array(
    [[230, 25, 75], [60, 60, 60], [255, 225, 25], [0, 130, 200], [60, 180, 75], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]],
    dtype=np.uint8,
)
OVERLAY_ALPHA = 0.5
SEPARATOR_PX = 2
CM_INCHES_PER_CLASS, CM_MAX_INCHES = 0.9, 16.0
CM_MAX_ANNOTATED_CLASSES = 15  # beyond this the numbers in the cells would not be readable
# The per-epoch mask picture: each panel drawn this many pixels wide whatever the image size (32-px
# panels are unreadable in MLflow's artifact view), nearest-neighbour so each label stays a block.
MASK_PANEL_PX = 192
MASK_DPI = 100
MASK_COLUMNS = ("image", "truth", "prediction")


IGNORED_COLOUR = np.array([0, 0, 0], np.uint8)
CORRECT_DIM = 0.35  # brightness of the grey input under correctly labelled pixels in the errors panel
# Wrong pixels in one colour that no class has: a class colour (e.g. the dark grey of class 1) can vanish
# against the dimmed input, and the prediction panel beside it already shows what was predicted.
ERROR_COLOUR = np.array([255, 255, 255], np.uint8)


def colorize(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 colours.  Labels outside 0..num_classes-1 (an
    ignore_index such as COCO's crowd 255) are black; past the palette, colours wrap around."""
    colours = PALETTE[np.mod(labels, len(PALETTE))]
    if num_classes is not None:
        colours[(labels < 0) | (labels >= num_classes)] = IGNORED_COLOUR
    return colours


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the label colours over a float [0, 1] or uint8 RGB image."""
    rgb = image.astype(np.float32) * (255.0 if image.dtype != np.uint8 else 1.0)
    return ((1 - alpha) * rgb + alpha * colorize(labels)).clip(0, 255).astype(np.uint8)


def errors(image: np.ndarray, true: np.ndarray, pred: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Where the prediction is wrong: those pixels white (ERROR_COLOUR), correct pixels as the
    dimmed grey input, unlabelled pixels (an ignore_index) black."""
    grey = image.astype(np.float32).mean(-1, keepdims=True) * CORRECT_DIM
    out = np.repeat(grey, 3, -1).clip(0, 255).astype(np.uint8)
    wrong = pred != true
    out[wrong] = ERROR_COLOUR
    if num_classes is not None:
        out[(true < 0) | (true >= num_classes)] = IGNORED_COLOUR
    return out


def mask_grid(images: np.ndarray, true: np.ndarray, pred: np.ndarray | None = None, num_classes: int | None = None,
              show_errors: bool = False) -> np.ndarray:
    """One row per sample: input | true mask [| predicted mask over the input [| errors]] (uint8 RGB).
    `images` are float RGB in [0, 1]; true labels outside 0..num_classes-1 show black."""
    rows = []
    for i, image in enumerate(images):
        rgb = (np.asarray(image, np.float32) * 255).clip(0, 255).astype(np.uint8)
        gap = np.full((rgb.shape[0], SEPARATOR_PX, 3), 255, np.uint8)
        panels = [rgb, gap, colorize(true[i], num_classes)]
        if pred is not None:
            panels += [gap, overlay(rgb, pred[i])]
            if show_errors:
                panels += [gap, errors(rgb, true[i], pred[i], num_classes)]
        rows.append(np.concatenate(panels, axis=1))
        rows.append(np.full((SEPARATOR_PX, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def labelled_masks(images: np.ndarray, true: np.ndarray, pred: np.ndarray, class_names: list[str]) -> np.ndarray:
    """A readable picture of predictions (uint8 RGB): one row per sample, columns image | truth |
    prediction (class colours), each panel upscaled to MASK_PANEL_PX, and a legend naming each class
    colour (black: unlabelled, when the truth has an ignore_index).  `images` are float RGB in [0, 1]."""
    n, columns = len(images), len(MASK_COLUMNS)
    num_classes = len(class_names)
    side = MASK_PANEL_PX / MASK_DPI
    legend_inches = 0.3 * (1 + (num_classes + 1) // columns)
    fig = Figure(figsize=(side * columns, side * n + 0.3 + legend_inches), dpi=MASK_DPI)
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n, columns, left=0, right=1, top=1 - 0.3 / fig.get_figheight(),
                            bottom=legend_inches / fig.get_figheight(), wspace=0.03, hspace=0.03)
    for i in range(n):
        rgb = (np.asarray(images[i], np.float32) * 255).clip(0, 255).astype(np.uint8)
        for j, panel in enumerate((rgb, colorize(true[i], num_classes), colorize(pred[i], num_classes))):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(MASK_COLUMNS[j], fontsize=11)
    handles = [Patch(color=PALETTE[c % len(PALETTE)] / 255, label=name) for c, name in enumerate(class_names)]
    if ((true < 0) | (true >= num_classes)).any():
        handles.append(Patch(color=IGNORED_COLOUR / 255, label="unlabelled"))
    fig.legend(handles=handles, loc="lower center", ncol=columns, frameon=False, fontsize=10)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def confusion_matrix_figure(cm: np.ndarray, class_names: list[str], title: str = "confusion matrix"):
    """A matplotlib Figure of the confusion matrix with rows normalised to 1 (the fraction of each
    true class predicted as each class; the diagonal is per-class recall) and the pixel counts.

    Built with `matplotlib.figure.Figure` on the Agg canvas: no pyplot, no global figure state.
    """

    cm = np.asarray(cm, np.int64)
    totals = cm.sum(1, keepdims=True)
    rows = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)  # a class with no pixels: an empty row
    n = len(class_names)
    side = min(1.6 + CM_INCHES_PER_CLASS * n, CM_MAX_INCHES)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} ({int(cm.sum())} px)")
    for i in range(n if n <= CM_MAX_ANNOTATED_CLASSES else 0):
        for j in range(n):
            colour = "white" if rows[i, j] > 0.5 else "black"
            ax.text(j, i, f"{rows[i, j]:.2f}\n{cm[i, j]}", ha="center", va="center", fontsize=8, color=colour)
    return fig

"""Pictures: the confusion-matrix figure, the per-epoch mask picture."""

import io

import numpy as np
from PIL import Image

from seglab.util import visualize


def test_confusion_matrix_figure_normalises_rows_and_names_the_classes():
    cm = np.array([[3, 1, 0], [0, 5, 0], [0, 0, 0]])  # the third class has no true pixels
    fig = visualize.confusion_matrix_figure(cm, ["object", "background", "boundary"])
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    np.testing.assert_allclose(shown, [[0.75, 0.25, 0], [0, 1, 0], [0, 0, 0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["object", "background", "boundary"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["object", "background", "boundary"]
    assert "0.75\n3" in [t.get_text() for t in ax.texts]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert Image.open(buffer).size[0] > 100


def test_ignored_labels_are_black_not_a_class_colour():
    from seglab.util import visualize

    labels = np.array([[0, 1, 255]])
    colours = visualize.colorize(labels, num_classes=2)
    np.testing.assert_array_equal(colours[0, 2], [0, 0, 0])
    assert not (colours[0, :2] == 0).all(axis=-1).any()
    grid = visualize.mask_grid(np.zeros((1, 1, 3, 3)), labels[None], labels[None].clip(0, 1), num_classes=2)
    assert grid.shape == (1, 3 * 3 + 2 * visualize.SEPARATOR_PX, 3)


def test_labelled_masks_are_upscaled_with_a_legend_of_every_class():
    images = np.zeros((2, 4, 4, 3), np.float32)
    true = np.array([[[0, 1, 2, 255]] * 4, [[1] * 4] * 4])  # 255: an ignore_index
    picture = visualize.labelled_masks(images, true, true.clip(0, 2), ["object", "background", "boundary"])
    height, width, _ = picture.shape
    assert width >= 3 * visualize.MASK_PANEL_PX and height >= 2 * visualize.MASK_PANEL_PX
    legend = picture[2 * visualize.MASK_PANEL_PX:].reshape(-1, 3)  # below the panels
    for colour in (*visualize.PALETTE[:3], visualize.IGNORED_COLOUR):
        assert (legend == colour).all(-1).sum() > 50, colour  # a patch, not a stray pixel
    # nearest-neighbour: a 4-px wide stripe of class 2 in the truth panel is one solid block of its colour
    panels = picture[: 2 * visualize.MASK_PANEL_PX].reshape(-1, 3)
    assert (panels == visualize.PALETTE[2]).all(-1).sum() > (visualize.MASK_PANEL_PX / 4) ** 2 * 0.8

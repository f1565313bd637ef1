"""Pictures: the confusion-matrix figure."""

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

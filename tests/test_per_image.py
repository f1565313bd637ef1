"""Per-image evaluation (seglab.engine.per_image): one confusion matrix per image, its row of the table,
the worst-k grid, and where the table's pooled figures equal the split-level ones."""

import numpy as np
import pytest

from seglab import metrics
from seglab.data import pipeline, shapes
from seglab.engine import per_image
from seglab.util import visualize
from tests.conftest import build_model

CLASSES = ["object", "background", "boundary"]
SIZE = 32


@pytest.fixture(scope="module")
def scored():
    """An untrained tiny U-Net (its mistakes differ from image to image) on 12 shapes images, batches of 5."""
    import keras

    keras.utils.set_random_seed(1)
    model = build_model("unet", 3, SIZE, base_filters=4, depth=2)
    split = shapes.build(image_size=SIZE, train_size=1, val_size=12).val
    batches = pipeline.make(split, image_size=SIZE, batch_size=5, training=False, seed=0, deterministic=True, cache=None)
    return model, batches, per_image.score_images(model, batches, 3, worst=4)


def test_each_images_matrix_is_the_split_formula_on_that_image_alone(scored):
    model, batches, result = scored
    images, masks = map(np.concatenate, zip(*[(i.numpy(), m.numpy()) for i, m in batches]))
    labels = np.argmax(model(images, training=False), -1)
    assert result.matrices.shape == (12, 3, 3)
    for i in range(12):
        np.testing.assert_array_equal(result.matrices[i], metrics.confusion_matrix(masks[i], labels[i], 3).numpy())
    np.testing.assert_array_equal(result.split_matrix, metrics.split_confusion_matrix(model, batches, 3))


def test_table_pooled_over_pixels_gives_the_split_figures_and_image_means_need_not(scored):
    _, _, result = scored
    rows = per_image.table(result, CLASSES)
    split = metrics.scores(result.split_matrix)
    pixels = np.array(rows["pixels"], float)
    assert rows["image"] == [str(i) for i in range(12)] and pixels.sum() == 12 * SIZE * SIZE
    # Pixel accuracy and the class shares, weighted by each image's pixels, are the split's.
    assert np.sum(np.array(rows["pixel_accuracy"]) * pixels) / pixels.sum() == pytest.approx(split["pixel_accuracy"])
    cm = result.split_matrix
    for c, name in enumerate(CLASSES):
        assert np.sum(np.array(rows[f"true_{name}"]) * pixels) == pytest.approx(cm.sum(1)[c])
        assert np.sum(np.array(rows[f"pred_{name}"]) * pixels) == pytest.approx(cm.sum(0)[c])
    # Every row is metrics.scores of its own matrix.
    for i in (0, 7):
        own = metrics.scores(result.matrices[i])
        assert rows["mean_iou"][i] == pytest.approx(own["mean_iou"])
        np.testing.assert_allclose([rows[f"iou_{n}"][i] for n in CLASSES], own["iou"])
    # IoU is a ratio of sums over the split, not the mean of the images' ratios: here they differ.
    assert np.nanmean(rows["mean_iou"]) != pytest.approx(split["mean_iou"], abs=1e-6)


def test_the_worst_are_the_lowest_mean_ious_worst_first_with_names(scored):
    _, _, result = scored
    rows = per_image.table(result, CLASSES)
    order = np.argsort(rows["mean_iou"], kind="stable")[:4]
    assert [e.index for e in result.worst] == list(order)
    assert [e.mean_iou for e in result.worst] == sorted(e.mean_iou for e in result.worst)
    names = [f"img{i}.png" for i in range(12)]
    listed = per_image.worst_list(result, names)
    assert [r["image"] for r in listed] == [names[i] for i in order]
    grid = per_image.worst_grid(result, 3)
    gap = visualize.SEPARATOR_PX
    assert grid.shape == (4 * SIZE + 3 * gap, 4 * SIZE + 3 * gap, 3) and grid.dtype == np.uint8


def test_errors_panel_shows_wrong_pixels_bright_on_the_dimmed_input_and_ignored_black():
    image = np.full((2, 3, 3), 200, np.uint8)
    true = np.array([[0, 1, 255], [2, 2, 2]])
    pred = np.array([[0, 2, 1], [2, 0, 2]])
    out = visualize.errors(image, true, pred, num_classes=3)
    dim = int(200 * visualize.CORRECT_DIM)
    np.testing.assert_array_equal(out[0, 0], [dim] * 3)  # correct
    np.testing.assert_array_equal(out[0, 1], visualize.ERROR_COLOUR)  # wrong
    np.testing.assert_array_equal(out[1, 1], visualize.ERROR_COLOUR)
    assert not (visualize.PALETTE == visualize.ERROR_COLOUR).all(1).any()  # no class shares it
    np.testing.assert_array_equal(out[0, 2], visualize.IGNORED_COLOUR)  # unlabelled

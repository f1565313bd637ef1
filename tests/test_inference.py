"""`seglab.inference.segment` in `slide` mode: windows that tile the image exactly give each tile's
own prediction; overlapping windows average their logits, as a NumPy reference computes; masks are
at the image's own size, also for images smaller than a window."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from seglab import inference
from seglab.cli import predict
from seglab.config.schema import ConfigError
from tests.conftest import ROOT, TINY, build_model, run_cli

WINDOW = 32


@pytest.fixture(scope="module")
def model():
    return build_model("unet", 3, WINDOW, depth=2, base_filters=4)


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def keras_logits(model, tile: np.ndarray) -> np.ndarray:
    return np.asarray(model(tile[None].astype(np.float32) / 255.0, training=False))[0]


def reference_slide_logits(model, img: np.ndarray, stride: int) -> np.ndarray:
    """Pixel by window: the mean of every window's logits at that pixel, windows every `stride` and flush with the edges."""
    height, width = img.shape[:2]
    starts = lambda side: sorted({*range(0, side - WINDOW + 1, stride), side - WINDOW})  # noqa: E731
    total, count = np.zeros((height, width, 3)), np.zeros((height, width, 1))
    for y in starts(height):
        for x in starts(width):
            total[y : y + WINDOW, x : x + WINDOW] += keras_logits(model, img[y : y + WINDOW, x : x + WINDOW])
            count[y : y + WINDOW, x : x + WINDOW] += 1
    return total / count


def test_windows_that_tile_the_image_give_each_tiles_own_prediction(model):
    img = image(2 * WINDOW, 3 * WINDOW)  # 2 x 3 tiles of the training size
    (mask,) = inference.segment(model, [img], mode="slide", stride=WINDOW)
    assert mask.shape == img.shape[:2]
    for ty in range(2):
        for tx in range(3):
            tile = img[ty * WINDOW : (ty + 1) * WINDOW, tx * WINDOW : (tx + 1) * WINDOW]
            expected = keras_logits(model, tile).argmax(-1)
            np.testing.assert_array_equal(mask[ty * WINDOW : (ty + 1) * WINDOW, tx * WINDOW : (tx + 1) * WINDOW], expected)


@pytest.mark.parametrize("height,width,stride", [(48, 80, 16), (40, 40, 12), (WINDOW, 70, 20)])
def test_overlapping_windows_average_their_logits_like_a_numpy_reference(model, height, width, stride):
    img = image(height, width, seed=height + width)
    expected = reference_slide_logits(model, img, stride)
    np.testing.assert_allclose(inference.slide_logits(model, img.astype(np.float32) / 255.0, stride), expected, atol=1e-5)
    masks, probabilities = inference.segment(model, [img], scores=True, mode="slide", stride=stride)
    np.testing.assert_array_equal(masks[0], expected.argmax(-1))
    softmax = np.exp(expected) / np.exp(expected).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities[0], softmax, atol=1e-5)


def test_window_starts_end_flush_with_the_edge():
    assert inference.window_starts(100, 32, 32) == [0, 32, 64, 68]
    assert inference.window_starts(32, 32, 16) == [0]
    assert inference.window_starts(64, 32, 16) == [0, 16, 32]


def test_an_image_smaller_than_a_window_is_padded_and_answered_at_its_size(model):
    img = image(20, 50)
    (mask,) = inference.segment(model, [img], mode="slide", stride=16)
    assert mask.shape == (20, 50)
    padded = np.zeros((WINDOW, 50, 3), np.uint8)
    padded[:20] = img
    np.testing.assert_array_equal(mask, reference_slide_logits(model, padded, 16)[:20].argmax(-1))


@pytest.mark.parametrize(
    "arg,message",
    [("inference.mode=tile", "inference.mode=tile is not allowed: choose one of resize, slide."),
     ("inference.stride=0", "inference.stride=0 is not allowed: use an integer >= 1")],
)
def test_predict_refuses_a_bad_inference_option_before_tensorflow(tmp_path, arg, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        predict.parse([f"model_uri={tmp_path}", f"input={tmp_path}", f"output={tmp_path / 'out'}", arg])


@pytest.mark.slow
def test_predict_slide_mode_writes_masks_at_the_images_own_sizes(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    run_cli(*TINY, "trainer.epochs=1", f"tracking.uri={uri}", cwd=tmp_path)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, (h, w) in {"large.png": (70, 100), "small.png": (20, 24)}.items():
        Image.fromarray(image(h, w)).save(photos / name)
    done = subprocess.run(
        [sys.executable, "-m", "seglab.predict", f"model_uri=runs:/{run.info.run_id}/model", f"input={photos}",
         f"output={tmp_path / 'masks'}", "inference.mode=slide", "inference.stride=24", f"tracking.uri={uri}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 2 masks" in done.stdout
    assert np.asarray(Image.open(tmp_path / "masks" / "large.png_mask.png")).shape == (70, 100)
    assert np.asarray(Image.open(tmp_path / "masks" / "small.png_mask.png")).shape == (20, 24)


def test_flip_averages_the_logits_of_the_image_and_of_its_mirror_flipped_back(model):
    img = image(WINDOW, WINDOW, seed=3)  # at the model's size: resize mode changes nothing
    expected = (keras_logits(model, img) + keras_logits(model, img[:, ::-1])[:, ::-1]) / 2
    (mask,), (scores,) = inference.segment(model, [img], scores=True, flip=True)
    np.testing.assert_allclose(scores, np.exp(expected) / np.exp(expected).sum(-1, keepdims=True), atol=1e-5)
    assert (mask == expected.argmax(-1)).all()
    assert not np.allclose(scores, inference.segment(model, [img], scores=True)[1][0], atol=1e-4)  # it did something

    wide = image(40, 72, seed=4)
    slid = (reference_slide_logits(model, wide, 16) + reference_slide_logits(model, wide[:, ::-1], 16)[:, ::-1]) / 2
    (mask,) = inference.segment(model, [wide], mode="slide", stride=16, flip=True)
    assert mask.shape == (40, 72) and (mask == slid.argmax(-1)).all()


def test_past_256_classes_masks_are_16_bit_not_wrapped():
    """A model of 300 classes whose logits favour class 299 everywhere: the mask says 299 (uint16, saved as a 16-bit
    PNG by predict and the served model); before, it was cast to uint8 and said 43."""
    import keras

    favour_299 = keras.initializers.Constant(np.eye(300)[299] * 10)
    wide = keras.Sequential([keras.Input((WINDOW, WINDOW, 3)),
                             keras.layers.Conv2D(300, 1, bias_initializer=favour_299, kernel_initializer="zeros")])
    (mask,) = inference.segment(wide, [image(40, 50)])
    assert mask.dtype == np.uint16 and mask.shape == (40, 50) and set(np.unique(mask)) == {299}
    (few,) = inference.segment(build_model("unet", 3, WINDOW, depth=2, base_filters=4), [image(40, 50)])
    assert few.dtype == np.uint8

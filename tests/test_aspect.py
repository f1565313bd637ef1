"""Images of any aspect (issue 31): `data.image_size` as one side or [height, width], `data.resize=stretch|fit|crop`,
each model's size rule on each side, and a non-square model trained, predicted, served, evaluated and exported at
its own (H, W)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from seglab.config import schema
from seglab.config.data import size_of
from tests.conftest import run_cli, run_module

# --- config ---------------------------------------------------------------------------------


def test_one_side_is_a_square_and_a_pair_is_height_then_width(compose_cfg):
    assert size_of(64) == (64, 64) and size_of([32, 64]) == (32, 64) and size_of((48, 16)) == (48, 16)
    square = schema.validate(compose_cfg("data.image_size=32"))
    assert square.data.image_size == 32 and square.data.resize == "stretch"
    wide = schema.validate(compose_cfg("data.image_size=[32,64]", "data.resize=crop"))
    assert size_of(wide.data.image_size) == (32, 64) and wide.data.resize == "crop"
    assert list(wide.data.source.image_size) == [32, 64]  # the synthetic set is generated at it


@pytest.mark.parametrize("value", ["[32,64,96]", "[32]", "[32,0]", "[-16,32]", "0", "[32,abc]", "[]"])
def test_a_size_that_is_not_one_side_or_two_positive_ones_is_refused_in_one_line(compose_cfg, value):
    with pytest.raises(schema.ConfigError) as caught:
        schema.validate(compose_cfg(f"data.image_size={value}"))
    message = str(caught.value)
    assert message.startswith("data.image_size=") and "\n" not in message
    assert "use one side (an integer >= 8) or [height, width]" in message


def test_fit_needs_an_ignore_index_for_its_padding_and_says_which(compose_cfg):
    with pytest.raises(schema.ConfigError, match=r"data.resize='fit' .* set data.ignore_index=255"):
        schema.validate(compose_cfg("data.resize=fit"))
    assert schema.validate(compose_cfg("data.resize=fit", "data.ignore_index=255")).data.resize == "fit"
    with pytest.raises(schema.ConfigError, match=r"data.resize='squash' .* choose one of stretch, fit, crop"):
        schema.validate(compose_cfg("data.resize=squash"))


def suggested(message: str) -> str:
    return message.split("(e.g. ")[1].split(")")[0]


@pytest.mark.parametrize("model,size", [
    ("unet", "[32,40]"),  # U-Net depth 4: multiples of 16, the width is not
    ("unet", "[40,32]"),  # ... the height is not
    ("fcn8", "[64,48]"),
    ("segformer", "48"),  # the known bug: suggested 32, then refused 32 (below SegFormer's 64)
    ("segformer", "[64,48]"),
    ("segformer", "[32,64]"),  # a multiple of 32 on each side, but too small
])
def test_each_side_is_checked_and_the_size_suggested_passes_every_rule(compose_cfg, model, size):
    with pytest.raises(schema.ConfigError) as caught:
        schema.validate(compose_cfg(f"model={model}", f"data.image_size={size}"))
    fix = suggested(str(caught.value))
    schema.validate(compose_cfg(f"model={model}", f"data.image_size={fix}"))  # the fix is valid as given


def test_the_segformer_suggestion_is_its_smallest_size(compose_cfg):
    with pytest.raises(schema.ConfigError, match=r"data.image_size=48 .* multiple of 32 \(e.g. 64\)"):
        schema.validate(compose_cfg("model=segformer", "data.image_size=48"))


# --- pipeline -------------------------------------------------------------------------------


def wide_example(height=30, width=90):
    """A (height, width) image whose left half is label 0 and right half label 1, coloured by label."""
    import tensorflow as tf

    mask = np.zeros((height, width), np.uint8)
    mask[:, width // 2 :] = 1
    image = np.where(mask[..., None] == 1, 200, 50).astype(np.uint8).repeat(3, axis=-1)
    return tf.data.Dataset.from_tensors((image, mask))


def first(resize, training=False, image_size=(32, 48), **kw):
    from seglab.data import pipeline

    batches = pipeline.make(wide_example(**kw), image_size=list(image_size), batch_size=1, training=training, seed=3,
                            deterministic=True, resize=resize, ignore_index=255, augment_options={"hflip": False})
    (image, mask), = batches.as_numpy_iterator()
    assert image.shape == (1, *image_size, 3) and image.dtype == np.float32
    assert mask.shape == (1, *image_size) and mask.dtype == np.int32
    return image[0], mask[0]


def test_stretch_squeezes_the_whole_image_into_height_and_width():
    image, mask = first("stretch")
    assert set(np.unique(mask)) == {0, 1}
    assert (mask[:, :24] == 0).all() and (mask[:, 24:] == 1).all()  # the halves stay halves of the new width


def test_fit_keeps_the_aspect_and_labels_the_padding_ignore_index():
    image, mask = first("fit")  # 30x90 into 32x48: scale 48/90, content 16x48, centred, 8 rows of padding above and below
    content = mask != 255
    rows = np.flatnonzero(content.any(axis=1))
    assert (rows.min(), rows.max() + 1) == (8, 24) and content[8:24].all()
    assert (mask[:8] == 255).all() and (mask[24:] == 255).all()
    assert (image[:8] == 0).all() and (image[24:] == 0).all()  # zeros in the image
    assert 3.0 - 0.2 < 48 / (rows.max() + 1 - rows.min()) < 3.0 + 0.2  # 90:30 kept
    assert (mask[8:24, :24] == 0).all() and (mask[8:24, 24:] == 1).all()


def test_crop_keeps_the_aspect_centre_in_validation_seeded_windows_in_training():
    # 30x90 to cover 32x48: scale 32/30, 32x96; the centre 48 columns straddle the label edge in the middle.
    _, centre = first("crop")
    assert (centre[:, :24] == 0).all() and (centre[:, 24:] == 1).all()
    windows = [first("crop", training=True)[1] for _ in range(2)]
    np.testing.assert_array_equal(*windows)  # stateless: the same window for the same (seed, epoch, position)
    edge = np.flatnonzero(windows[0][0] == 1)
    assert 255 not in windows[0] and set(np.unique(windows[0])) <= {0, 1}
    # A window of the covering 32x96 image: one label edge at most, unsqueezed (columns of one label only).
    assert (windows[0] == windows[0][:1]).all() and (edge.size == 0 or (np.diff(edge) == 1).all())


def test_crop_windows_differ_by_seed():
    from seglab.data import pipeline

    def window(seed):
        batches = pipeline.make(wide_example(height=16, width=200), image_size=[16, 16], batch_size=1, training=True,
                                seed=seed, deterministic=True, resize="crop", augment_options={"hflip": False})
        return next(batches.as_numpy_iterator())[0][0]

    assert len({window(seed).tobytes() for seed in range(6)}) > 1


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """One tiny non-square training, crop mode, on shapes generated at 48x64 for a 32x64 model: (uri, run id, cwd)."""
    cwd = tmp_path_factory.mktemp("aspect")
    uri = f"sqlite:///{cwd}/mlflow.db"
    run_cli("data=shapes", "data.image_size=[32,64]", "data.source.image_size=[48,64]", "data.resize=crop",
            "data.source.train_size=16", "data.source.val_size=8", "data.source.test_size=4", "model.depth=2",
            "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=8", "trainer.mask_samples=1",
            f"tracking.uri={uri}", cwd=cwd, timeout=900)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data.resize"] == "crop"
    return uri, run.info.run_id, cwd


@pytest.mark.slow
def test_a_non_square_model_predicts_masks_at_each_images_size_through_predict_and_pyfunc(wide_run, tmp_path):
    import mlflow

    from seglab import tracking
    from seglab.cli import predict

    uri, run_id, _ = wide_run
    model = tracking.load_model(f"runs:/{run_id}/model", uri)
    assert model.input_shape == (None, 32, 64, 3) and model.output_shape == (None, 32, 64, 3)
    assert tracking.model_resize(f"runs:/{run_id}/model", uri) == "crop"
    rng = np.random.default_rng(0)
    images = tmp_path / "in"
    images.mkdir()
    sizes = {"model.png": (32, 64), "tall.png": (70, 30), "wide.png": (41, 150)}
    for name, shape in sizes.items():
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(images / name)
    assert predict.main([f"model_uri=runs:/{run_id}/model", f"input={images}", f"output={tmp_path / 'out'}",
                         f"tracking.uri={uri}"]) == 0
    for name, shape in sizes.items():
        mask = np.asarray(Image.open(tmp_path / "out" / f"{name}_mask.png"))
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 1, 2}, name
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/served")
    assert served.metadata.flavors["python_function"]["config"]["resize"] == "crop"
    encoded = []
    for name in sizes:
        buffer = io.BytesIO()
        Image.open(images / name).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    import pandas as pd

    answer = served.predict(pd.DataFrame({"image": encoded}))
    assert [(int(h), int(w)) for h, w in zip(answer["height"], answer["width"])] == list(sizes.values())
    np.testing.assert_array_equal(  # the served model and predict answer the same masks
        np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(answer["mask"][2])))),
        np.asarray(Image.open(tmp_path / "out" / "wide.png_mask.png")))


@pytest.mark.slow
def test_a_crop_model_is_evaluated_on_full_images_in_windows_and_exports_at_its_size(wide_run, tmp_path):
    uri, run_id, cwd = wide_run
    done = run_module("seglab.evaluate", f"model_uri=runs:/{run_id}/model", "data=shapes", "data.source.test_size=4",
                      "data.source.image_size=[48,64]", f"tracking.uri={uri}", cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    (evaluation,) = [r for r in runs if r.info.run_id != run_id]
    assert evaluation.data.params["data.resize"] == "crop"  # adopted from the training, not data=shapes' stretch
    assert evaluation.data.params["inference.stride"] == "16"  # windows of 32x64 every half of the shorter side
    # Scored on the full 48x64 test images (4 of them), not on 32x64 centre crops.
    assert float(evaluation.data.metrics["test_pixel_accuracy"]) >= 0
    table = client.download_artifacts(evaluation.info.run_id, "per_image_test.json", str(tmp_path))
    import json

    rows = json.loads(open(table).read())
    pixels = dict(zip(rows["columns"], zip(*rows["data"])))["pixels"]
    assert list(pixels) == [48 * 64] * 4
    exported = run_module("seglab.export", f"model_uri=runs:/{run_id}/model", "format=saved_model",
                          f"output={tmp_path / 'export'}", f"tracking.uri={uri}", cwd=cwd, timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "max abs difference" in exported.stdout


def test_a_resume_sees_one_side_and_the_same_pair_as_the_same_architecture():
    from seglab.engine.lifecycle import same_size

    assert same_size("64") == same_size("[64, 64]") == (64, 64)
    assert same_size("[32, 64]") != same_size("[64, 32]")


@pytest.mark.parametrize("mode", ["resize", "slide"])
def test_a_crop_trained_model_is_scored_on_the_whole_covering_image_in_either_mode(compose_cfg, mode):
    """seglab.evaluate's split for a model trained on crops: the image scaled to cover the model's size, whole, in
    resize mode and in slide mode alike; before, slide mode (inference.mode=slide) cut one centre crop and scored it."""
    import keras
    import tensorflow as tf

    from seglab.config.inference import InferenceOptions
    from seglab.data import Splits
    from seglab.engine import evaluate

    cfg = compose_cfg("data=shapes", "data.image_size=32", "data.resize=crop")
    frames = tf.data.Dataset.from_tensors((tf.zeros((96, 128, 3), tf.uint8), tf.zeros((96, 128), tf.int32)))
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(3, 1)])
    split, _, stride = evaluate.scoring(cfg, Splits(train=None, val=None, test=frames), "test", model, InferenceOptions(mode=mode))
    (images, masks), = list(split.batches.as_numpy_iterator())
    assert images.shape == (1, 32, 43, 3) and masks.shape == (1, 32, 43) and stride == 16

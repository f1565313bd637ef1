"""DeepLabV3+ and SegFormer through KerasHub: logits at the input size, parameter counts against the
papers' and KerasHub's, the schema's checks, a preset offline, and a tiny real training of each that
is deterministic, logs, resumes and serves like the other models.  No network: random initialisation."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from seglab.config import schema
from seglab.engine import determinism
from seglab.models import hub
from seglab.tracking import served
from tests.conftest import build_model, run_cli
from tests.test_models import DEAD_PROXY

SMALL = {"deeplabv3plus": dict(depth=18), "segformer": dict(decoder_width=32)}


@pytest.mark.parametrize("name", ["deeplabv3plus", "segformer"])
@pytest.mark.parametrize("num_classes,size", [(2, 64), (3, 96)])
def test_logits_at_the_input_size_in_float32_also_in_mixed_precision(name, num_classes, size):
    model = build_model(name, num_classes, size, **SMALL[name])
    out = model(np.zeros((2, size, size, 3), np.float32))
    assert out.shape == (2, size, size, num_classes) and out.dtype == "float32"
    keras.config.set_dtype_policy("mixed_float16")
    try:
        assert build_model(name, num_classes, size, **SMALL[name]).output.dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")


def test_deeplabv3plus_resnet50_has_kerashubs_parameter_count():
    """KerasHub's deeplab_v3_plus_resnet50_pascalvoc: 39,190,656 parameters before its bias-free 1x1
    classifier; seglab's classifier has a bias (256 x C + C)."""
    model = build_model("deeplabv3plus", 21, 64)
    assert model.get_layer("deeplabv3plus_backbone").count_params() == 39_190_656
    assert model.count_params() == 39_190_656 + 256 * 21 + 21


def test_deeplabv3plus_decoder_is_the_papers_on_resnet():
    """ResNet-50 without its classifier (23.5 M, KerasHub's resnet_50_imagenet) plus ASPP, the 48-channel
    projection of the stride-4 features and the head: the paper's decoder (section 3.1) in numbers."""
    model = build_model("deeplabv3plus", 2, 64)
    resnet = model.get_layer("deeplabv3plus_backbone").image_encoder
    assert resnet.count_params() == 23_561_152  # KerasHub's figure for resnet_50_imagenet
    backbone = model.get_layer("deeplabv3plus_backbone")
    assert backbone.get_layer("decoder_conv").filters == 48
    assert list(build_model("deeplabv3plus", 2, 224).get_layer("deeplabv3plus_backbone").dilation_rates) == [6, 7, 7]
    assert list(build_model("deeplabv3plus", 2, 640).get_layer("deeplabv3plus_backbone").dilation_rates) == [6, 12, 18]


def test_deeplabv3plus_rates_past_the_features_side_are_built_at_it_and_compute_the_same():
    """At 64 px the pyramid pools 2x2 features: rates 6/12/18 are built as 2/2/2 (TensorFlow's CPU atrous
    kernel pads to the rate: ~10x the step's time), and that pyramid equals KerasHub's at 6/12/18 with the
    same weights.  A rate below the side is a different function: 1 is not 2 here."""
    from keras_hub.src.models.deeplab_v3.deeplab_v3_layers import SpatialPyramidPooling

    backbone = build_model("deeplabv3plus", 3, 64).get_layer("deeplabv3plus_backbone")
    assert list(backbone.dilation_rates) == [2, 2, 2]
    built = next(layer for layer in backbone.layers if isinstance(layer, SpatialPyramidPooling))
    features = np.random.default_rng(0).normal(size=(2, 2, 2, 2048)).astype("float32")

    def pyramid(rates):
        layer = SpatialPyramidPooling(dilation_rates=rates)
        layer(features)
        layer.set_weights(built.get_weights())
        return keras.ops.convert_to_numpy(layer(features))

    np.testing.assert_allclose(pyramid([6, 12, 18]), keras.ops.convert_to_numpy(built(features)), atol=1e-5)
    assert np.abs(pyramid([1, 2, 2]) - pyramid([2, 2, 2])).max() > 1e-3


@pytest.mark.parametrize("num_classes,expected", [(150, 3_753_206), (19, 3_719_539)])
def test_segformer_b0_has_the_papers_size(num_classes, expected):
    """SegFormer-B0: 3.8 M parameters on ADE20K's 150 classes (the paper's table 1, 3.7 M in its table 7
    for Cityscapes' 19); MiT-B0's encoder 3.3 M, the decoder with C = 256 (section 4.1)."""
    model = build_model("segformer", num_classes, 64)
    assert model.count_params() == expected
    assert model.get_layer("segformer_backbone").image_encoder.count_params() == 3_319_392
    assert model.get_layer("segformer_backbone").projection_filters == 256


def test_imagenet_normalisation_is_the_encoders():
    x = np.random.default_rng(0).uniform(size=(2, 4, 4, 3)).astype(np.float32)
    inputs = keras.Input((4, 4, 3))
    normalised = keras.Model(inputs, hub.imagenet_normalisation(inputs))(x)
    np.testing.assert_allclose(normalised, (x - np.array(hub.IMAGENET_MEAN)) / np.array(hub.IMAGENET_STD), atol=1e-5)


@pytest.mark.parametrize("name", ["deeplabv3plus", "segformer"])
def test_the_input_multiple_the_schema_asks_for_is_the_builders(compose_cfg, name):
    model = schema.validate(compose_cfg(f"model={name}", "data.image_size=64")).model
    smallest = model.min_size()
    assert model.size_multiple() == 32 and smallest == {"deeplabv3plus": 32, "segformer": 64}[name]
    assert build_model(name, 2, smallest, **SMALL[name]).output_shape == (None, smallest, smallest, 2)
    with pytest.raises(schema.ConfigError, match="data.image_size=80 .* multiple of 32"):
        schema.validate(compose_cfg(f"model={name}", "data.image_size=80"))


def test_segformer_refuses_the_size_kerashubs_mit_cannot_build(compose_cfg):
    with pytest.raises(schema.ConfigError, match="data.image_size=32 .* at least 64 px"):
        schema.validate(compose_cfg("model=segformer", "data.image_size=32"))
    with pytest.raises(ValueError):
        build_model("segformer", 2, 32, **SMALL["segformer"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("model=deeplabv3plus", "model.depth=42"), "model.depth=42"),
        (("model=deeplabv3plus", "model.dilation_rates=[6,12]"), "model.dilation_rates"),
        (("model=deeplabv3plus", "model.preset=mit_b0_ade20k_512"), "model.preset='mit_b0_ade20k_512' .* KerasHub's ResNet presets"),
        (("model=deeplabv3plus", "model.preset=resnet_18_imagenet"), "model.preset='resnet_18_imagenet' .* another size \\(18, not 50\\)"),
        (("model=segformer", "model.variant='b9'"), "model.variant='b9'"),
        (("model=segformer", "model.preset=mit_b2_ade20k_512"), "model.preset='mit_b2_ade20k_512' .* another size \\(b2, not b0\\)"),
        (("model=segformer", "model.drop_path=1.0"), "model.drop_path"),
    ],
)
def test_bad_options_name_the_key_before_tensorflow(compose_cfg, overrides, message):
    with pytest.raises(schema.ConfigError, match=message):
        schema.validate(compose_cfg(*overrides))


@pytest.mark.timeout(60)  # without the reachability check, kagglehub could retry for minutes
@pytest.mark.parametrize("name,preset,what", [("deeplabv3plus", "resnet_50_imagenet", "ResNet-50"), ("segformer", "mit_b0_ade20k_512", "MiT-B0")])
def test_a_preset_offline_fails_at_once_with_what_to_do(tmp_path, monkeypatch, name, preset, what):
    for key, value in {"KAGGLEHUB_CACHE": str(tmp_path), **DEAD_PROXY}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(hub.PresetUnavailable) as error:
        build_model(name, 2, 64, preset=preset)
    message = str(error.value)
    assert f"model.preset={preset}" in message and what in message and "\n" not in message
    assert str(tmp_path / "models" / "keras") in message  # kagglehub's cache, where it would be
    assert "model.preset=DIR" in message and "model.preset=null" in message


def test_a_saved_preset_directory_loads_offline(tmp_path, monkeypatch):
    """The way out the offline message gives: a preset saved on another machine, passed as a directory."""
    import keras_hub

    for key, value in DEAD_PROXY.items():
        monkeypatch.setenv(key, value)
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
    )
    resnet.save_to_preset(str(tmp_path / "resnet18"))
    model = build_model("deeplabv3plus", 2, 32, depth=18, preset=str(tmp_path / "resnet18"))
    loaded = model.get_layer("deeplabv3plus_backbone").image_encoder
    np.testing.assert_array_equal(loaded.weights[0].numpy(), resnet.weights[0].numpy())


@pytest.mark.parametrize("name", ["deeplabv3plus", "segformer"])
def test_the_training_step_has_deterministic_gpu_kernels(name):
    """The determinism preflight finds nothing: bilinear resizing's gradient has a deterministic GPU kernel."""
    model = build_model(name, 3, 64, **SMALL[name])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert determinism.find(model, 64) == []


def tiny(name: str) -> tuple[str, ...]:
    small = {"deeplabv3plus": ("model.depth=18",), "segformer": ("model.decoder_width=16",)}[name]
    return (f"model={name}", *small, "data.image_size=64", "data.source.train_size=16", "data.source.val_size=8",
            "trainer.batch_size=8", "trainer.mask_samples=0", "deterministic=true")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three TensorFlow start-ups and two tracings of a transformer's training step
@pytest.mark.parametrize("name", ["deeplabv3plus", "segformer"])
def test_cli_trains_deterministically_resumes_and_serves(tmp_path, name):
    """One epoch, then `trainer.resume=<id>` for a second in the same run; the logged served model loads
    with mlflow.pyfunc (KerasHub's layers are serialisable) and answers a mask at the image's size."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/m.db"
    # No model logged by the first epoch's run (a transformer's SavedModel takes ~20 s): the resumed run logs it.
    first = run_cli(*tiny(name), "trainer.epochs=1", "tracking.log_model=false", f"tracking.uri={uri}", cwd=tmp_path, timeout=1200)
    assert "without a deterministic GPU kernel" not in first.stdout + first.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["model._target_"] == f"seglab.models.{name}.build"
    run_cli(*tiny(name), "trainer.epochs=2", f"trainer.resume={run.info.run_id}", f"tracking.uri={uri}", cwd=tmp_path, timeout=1200)
    (resumed,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mean_iou")] == [0, 1]

    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/served")
    image = served.input_example(48)  # not the training size: resized in, the mask back at 48 x 48
    answer = pyfunc.predict(pd.DataFrame({"image": image["image"]}))
    assert (answer["height"][0], answer["width"][0]) == (48, 48)
    keras_model = served.keras_model_of(pyfunc)
    assert keras_model.get_layer(f"{name}_backbone").__class__.__module__.startswith("keras_hub")

"""FCN-8s and the MobileNetV2 U-Net: shapes, parameter counts from the papers' architectures,
in-graph preprocessing, pretrained weights (a file, the Keras cache, offline), learning, saving,
FLOPs, and the config errors.  No network: ImageNet files are stand-ins with random weights."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format  # writes Keras' own ImageNet file format
from mlflow.tracking import MlflowClient

from seglab.config import schema
from seglab.models import encoders, facts, fcn8, unet_mobilenet
from seglab.cli.models import describe
from seglab.models.flops import forward_flops
from tests.conftest import build_model, run_cli

RANDOM = {"weights": None, "trainable": True}
# A proxy on a closed local port: any download attempt fails at once, even on a machine with network.
DEAD_PROXY = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


@pytest.fixture
def empty_cache_offline(tmp_path, monkeypatch):
    """KERAS_HOME = tmp_path (no cached weights), and no way to download any."""
    for name, value in {"KERAS_HOME": str(tmp_path), **DEAD_PROXY}.items():
        monkeypatch.setenv(name, value)
    return tmp_path
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # Simonyan & Zisserman, table 1, D


def conv(cin, cout, k=3, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def vgg16_conv_params():
    total, cin = 0, 3
    for block in VGG16_BLOCKS:
        for width in block:
            total += conv(cin, width)
            cin = width
    return total


def fcn_params(num_classes, fc_width, variant, scratch=False):
    """FCN (Long et al. 2015, figure 3): VGG16 convs, fc6 7x7, fc7 1x1, 1x1 scores, bias-free upsampling.
    `scratch` (model.encoder.weights=null): a batch norm (gamma, beta, mean, variance) after each VGG16 conv."""
    c = num_classes
    batch_norm = 4 * sum(sum(block) for block in VGG16_BLOCKS) if scratch else 0
    total = vgg16_conv_params() + batch_norm + conv(512, fc_width, 7) + conv(fc_width, fc_width, 1) + conv(fc_width, c, 1)
    if variant == "32s":
        return total + conv(c, c, 64, bias=False)
    total += conv(c, c, 4, bias=False) + conv(512, c, 1)  # upscore2, score_pool4
    if variant == "16s":
        return total + conv(c, c, 32, bias=False)
    return total + conv(c, c, 4, bias=False) + conv(256, c, 1) + conv(c, c, 16, bias=False)


# --- shapes and parameter counts ------------------------------------------------------------


@pytest.mark.parametrize("num_classes,size", [(2, 32), (3, 64)])
@pytest.mark.parametrize("variant", facts.FCN_VARIANTS)
def test_fcn_logits_at_input_size_and_paper_parameter_count(num_classes, size, variant):
    model = build_model("fcn8", num_classes, size, variant=variant, fc_width=32, encoder=RANDOM)
    out = model(np.zeros((2, size, size, 3), np.float32))
    assert out.shape == (2, size, size, num_classes) and out.dtype == "float32"
    assert model.count_params() == fcn_params(num_classes, 32, variant, scratch=True)


def test_fcn_paper_width_is_one_setting_away():
    model = build_model("fcn8", 21, 32, fc_width=4096, encoder=RANDOM)  # PASCAL VOC's 21 classes
    assert model.get_layer("fc6").filters == model.get_layer("fc7").filters == 4096
    assert model.count_params() == fcn_params(21, 4096, "8s", scratch=True)


def test_fcn_from_scratch_normalises_every_vgg16_conv_and_the_pretrained_trunk_stays_keras_vgg16(tmp_path):
    scratch = build_model("fcn8", 3, 32, fc_width=8, encoder=RANDOM).get_layer("vgg16")
    convs = [layer.name for layer in scratch.layers if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer.name for layer in scratch.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert convs == [f"block{b}_conv{i}" for b, block in enumerate(VGG16_BLOCKS, 1) for i in range(1, len(block) + 1)]
    assert norms == [name.replace("conv", "bn") for name in convs]
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(tmp_path / "vgg16.weights.h5")
    pretrained = build_model("fcn8", 3, 32, fc_width=8, encoder={"weights": str(tmp_path / "vgg16.weights.h5"), "trainable": True})
    assert pretrained.count_params() == fcn_params(3, 8, "8s")  # Keras' VGG16, no batch norm: ImageNet files fit it


@pytest.mark.parametrize("num_classes,size", [(2, 32), (3, 64)])
def test_unet_mobilenet_logits_at_input_size(num_classes, size):
    model = build_model("unet_mobilenet", num_classes, size, encoder=RANDOM)
    out = model(np.zeros((2, size, size, 3), np.float32))
    assert out.shape == (2, size, size, num_classes) and out.dtype == "float32"


def test_unet_mobilenet_has_the_tutorials_parameter_count():
    assert build_model("unet_mobilenet", 3, 128, alpha=1.0, encoder=RANDOM).count_params() == 6_504_227


@pytest.mark.parametrize("alpha", [0.35, 1.0])
def test_unet_mobilenet_parameter_count_is_encoder_plus_pix2pix_decoder(alpha):
    num_classes, size = 2, 64
    mobilenet = keras.applications.MobileNetV2((size, size, 3), alpha=alpha, include_top=False, weights=None)
    # The encoder stops at block_16_project, before its batch norm: MobileNetV2 minus that batch norm
    # and the last 1x1 conv (Conv_1) with its batch norm.
    unused = ("block_16_project_BN", "Conv_1", "Conv_1_bn")
    encoder = mobilenet.count_params() - sum(mobilenet.get_layer(name).count_params() for name in unused)
    skip_channels = [mobilenet.get_layer(name).output.shape[-1] for name in unet_mobilenet.SKIPS]
    decoder, cin = 0, skip_channels[-1]
    for filters, skip in zip(unet_mobilenet.DECODER_FILTERS, reversed(skip_channels[:-1])):
        decoder += conv(cin, filters, bias=False) + 4 * filters  # transposed conv + batch norm (gamma, beta, mean, variance)
        cin = filters + skip
    decoder += conv(cin, num_classes)
    model = build_model("unet_mobilenet", num_classes, size, alpha=alpha, dropout=0.5, encoder=RANDOM)
    assert model.count_params() == encoder + decoder
    assert [layer.name for layer in model.layers if "dropout" in layer.name] == [f"up{i}_dropout" for i in range(4)]


# --- building blocks ------------------------------------------------------------------------


def test_fcn_upsampling_starts_as_bilinear_interpolation():
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, fcn8.upsample(inputs, 2, 8, "up"))
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[None, None, :, None], (1, 4, 4, 2))  # rises along the width
    out = model(ramp).numpy()
    assert out.shape == (1, 32, 32, 2)
    inner = out[0, 8:24, 8:24, 0]  # away from the zero padding at the borders
    # Input pixel i lands on the centre of its 8x8 output block, 8 i + 3.5, and values in between are linear.
    np.testing.assert_allclose(inner, np.broadcast_to((np.arange(8, 24) - 3.5) / 8, (16, 16)), atol=1e-6)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])  # channels do not mix


def test_encoder_preprocessing_matches_keras_applications():
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    inputs = keras.Input((8, 8, 3))
    vgg = keras.Model(inputs, encoders.vgg16_preprocessing(inputs))
    mobilenet = keras.Model(inputs, encoders.mobilenet_v2_preprocessing(inputs))
    np.testing.assert_allclose(vgg(x), keras.applications.vgg16.preprocess_input(x * 255.0), atol=1e-4)
    np.testing.assert_allclose(mobilenet(x), keras.applications.mobilenet_v2.preprocess_input(x * 255.0), atol=1e-6)


# --- pretrained weights ---------------------------------------------------------------------


def test_fcn_loads_an_encoder_weights_file_and_can_freeze_it(tmp_path):
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    vgg.save_weights(tmp_path / "vgg16.weights.h5")
    model = build_model("fcn8", 2, 32, fc_width=8, encoder={"weights": str(tmp_path / "vgg16.weights.h5"), "trainable": False})
    loaded = model.get_layer("vgg16").get_layer("block5_conv3").kernel.numpy()
    np.testing.assert_array_equal(loaded, vgg.get_layer("block5_conv3").kernel.numpy())
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"fc6", "fc7", "score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"}


def test_weights_file_of_another_architecture_is_explained(tmp_path):
    other = keras.applications.MobileNetV2((32, 32, 3), alpha=0.35, include_top=False, weights=None)
    other.save_weights(tmp_path / "small.weights.h5")
    with pytest.raises(ValueError, match="does not fit the MobileNetV2 \\(alpha=1.0\\) encoder"):
        build_model("unet_mobilenet", 2, 32, alpha=1.0, encoder={"weights": str(tmp_path / "small.weights.h5")})
    with pytest.raises(FileNotFoundError, match="model.encoder.weights='nowhere.h5': no such file"):
        build_model("unet_mobilenet", 2, 32, encoder={"weights": "nowhere.h5"})


def test_imagenet_weights_come_from_the_keras_cache_under_keras_home(empty_cache_offline):
    tmp_path = empty_cache_offline
    stand_in = keras.applications.MobileNetV2((96, 96, 3), alpha=0.35, include_top=False, weights=None)
    (tmp_path / "models").mkdir()
    with h5py.File(tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, stand_in)  # the format of Keras' downloads
    model = build_model("unet_mobilenet", 2, 96, alpha=0.35, encoder={"weights": "imagenet", "trainable": False})
    loaded = model.get_layer("mobilenet_v2").get_layer("block_16_project").kernel.numpy()
    np.testing.assert_array_equal(loaded, stand_in.get_layer("block_16_project").kernel.numpy())
    assert not model.get_layer("mobilenet_v2").trainable_weights


@pytest.mark.timeout(60)  # without the reachability check, Keras' download could hang here for minutes
@pytest.mark.parametrize("name,model", [("MobileNetV2", "unet_mobilenet"), ("VGG16", "fcn8")])
def test_missing_imagenet_weights_offline_fail_with_what_to_do(empty_cache_offline, name, model):
    tmp_path = empty_cache_offline
    with pytest.raises(encoders.EncoderWeightsUnavailable) as error:
        build_model(model, 3, 64, encoder={"weights": "imagenet", "trainable": True})
    message = str(error.value)
    expected_file = unet_mobilenet.imagenet_file(1.0, 224) if name == "MobileNetV2" else fcn8.VGG16_IMAGENET_FILE
    assert f"{name}" in message and expected_file in message
    assert str(tmp_path / "models" / expected_file) in message  # where to put it
    assert "model.encoder.weights=<path>" in message and "model.encoder.weights=null" in message
    assert not (tmp_path / "models" / expected_file).exists()


# --- learning and saving --------------------------------------------------------------------


def fit_loss_history(model, learning_rate, epochs):
    """Loss per step on one batch whose labels are constant over 8x8 blocks (so stride-8 FCN scores can fit them)."""
    keras.utils.set_random_seed(0)
    blocks = np.random.default_rng(0).uniform(size=(8, 4, 4, 3)).astype(np.float32)
    x = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)
    y = (x[..., 0] > 0.5).astype(np.int32)
    # Eagerly: tracing MobileNetV2's train step takes far longer than these few steps.
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(learning_rate), loss, run_eagerly=True)
    return model.fit(x, y, epochs=epochs, batch_size=8, verbose=0).history["loss"]


@pytest.mark.slow
def test_fcn_from_scratch_learns_at_the_default_learning_rate():
    """Adam at conf/optimizer/adam.yaml's 3e-3: a plain VGG16 from scratch (no batch norm) blew up in the quick
    start (loss 57503 in epoch 1, then all background) and here stays near chance (0.61 of 0.69 after 15 steps);
    with batch norm after each conv the loss halves (0.32)."""
    history = fit_loss_history(build_model("fcn8", 2, 32, fc_width=16, dropout=0.0, encoder=RANDOM), 3e-3, epochs=15)
    assert np.isfinite(history).all() and history[-1] < 0.6 * history[0], history


@pytest.mark.slow
def test_unet_mobilenet_a_few_steps_reduce_the_loss():
    history = fit_loss_history(build_model("unet_mobilenet", 2, 32, alpha=0.35, encoder=RANDOM), 1e-3, epochs=6)
    assert history[-1] < 0.8 * history[0]


@pytest.mark.parametrize(
    "build",
    [lambda: build_model("fcn8", 3, 32, fc_width=8, encoder=RANDOM), lambda: build_model("unet_mobilenet", 3, 32, alpha=0.35, encoder=RANDOM)],
)
def test_saved_model_reloads_with_plain_keras_and_predicts_the_same(tmp_path, build):
    model = build()
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")  # no custom objects: preprocessing is in the graph
    np.testing.assert_array_equal(model(x, training=False), again(x, training=False))


# --- FLOPs and the describe command ---------------------------------------------------------


def test_flops_match_the_papers():
    mobilenet = keras.applications.MobileNetV2((224, 224, 3), include_top=True, weights=None)
    assert forward_flops(mobilenet) / 2 == pytest.approx(300e6, rel=0.01)  # Sandler et al. 2018, table 4: 300 M mult-adds
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    convs, side, cin = 0, 224, 3
    for block in VGG16_BLOCKS:
        for width in block:
            convs += side * side * 9 * cin * width
            cin = width
        side //= 2
    assert forward_flops(vgg) == 2 * convs


def test_describe_prints_parameters_and_gflops(capsys):
    params, flops = describe("unet_mobilenet", ["data.image_size=128", "model.encoder.weights=null"])
    assert params == 6_504_227
    assert 1e9 < flops < 1.5e9
    assert f"unet_mobilenet: 6,504,227 parameters, {flops / 1e9:.2f} GFLOPs per 128x128 image" in capsys.readouterr().out


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fcn8", "unet_mobilenet"])
def test_size_not_a_multiple_of_32_is_rejected_by_the_schema(compose_cfg, model):
    with pytest.raises(schema.ConfigError, match="data.image_size=48 .* multiple of 32 \\(e.g. 32\\)"):
        schema.validate(compose_cfg(f"model={model}", "data.image_size=48"))


@pytest.mark.parametrize(
    "model,overrides,arguments",
    [
        ("unet", ["model.depth=2"], dict(depth=2, base_filters=2)),
        ("fcn8", [], dict(fc_width=8, encoder=RANDOM)),
        ("unet_mobilenet", [], dict(alpha=0.35, encoder=RANDOM)),
    ],
)
def test_the_input_multiple_the_schema_asks_for_is_the_builders(compose_cfg, model, overrides, arguments):
    """One multiple (seglab/models/facts.py) builds logits at the input size; one and a half, a multiple of
    half of it, does not fit the skip connections: the schema asks for exactly what the builder needs."""
    multiple = schema.validate(compose_cfg(f"model={model}", *overrides)).model.size_multiple()
    assert build_model(model, 2, multiple, **arguments).output_shape == (None, multiple, multiple, 2)
    with pytest.raises(ValueError, match="shape"):
        build_model(model, 2, multiple * 3 // 2, **arguments)


@pytest.mark.parametrize("model", ["fcn8", "unet_mobilenet"])
def test_frozen_random_encoder_is_rejected(compose_cfg, model):
    expected = "model.encoder.trainable=False is not allowed: a frozen encoder with random weights"
    with pytest.raises(schema.ConfigError, match=expected):
        schema.validate(compose_cfg(f"model={model}", "model.encoder.weights=null", "model.encoder.trainable=false"))


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("model=fcn8", "model.variant=4s"), "model.variant"),
        (("model=fcn8", "model.fc_width=0"), "model.fc_width"),
        (("model=unet_mobilenet", "model.alpha=0.6"), "model.alpha"),  # no ImageNet weights for 0.6
        (("model=unet_mobilenet", "model.dropout=1.0"), "model.dropout"),
    ],
)
def test_out_of_range_model_options_name_the_key(compose_cfg, overrides, key):
    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.")):
        schema.validate(compose_cfg(*overrides))
    if key == "model.alpha":
        schema.validate(compose_cfg(*overrides, "model.encoder.weights=null"))  # fine from scratch


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_sweep_over_encoder_weights_offline(tmp_path):
    """From scratch, FCN-8s trains; with ImageNet weights neither cached nor downloadable, the job
    ends FAILED with the fix, and the sweep exits 1 naming it (one sweep: one TensorFlow start-up for both)."""
    uri = f"sqlite:///{tmp_path}/m.db"
    done = run_cli(
        "--multirun", "model=fcn8", "model.encoder.weights=null,imagenet", "model.fc_width=8", "data.image_size=32",
        "data.source.train_size=8", "data.source.val_size=8", "trainer.epochs=1", "trainer.batch_size=8",
        "trainer.mask_samples=0", f"tracking.uri={uri}", "tracking.log_model=false",
        cwd=tmp_path, check=False, env={"KERAS_HOME": str(tmp_path / "keras"), **DEAD_PROXY},
    )
    # One job failed, one succeeded: the sweep went on, then exits non-zero naming the failed job.
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 1 and last.startswith("seglab: 1 of 2 jobs of the sweep failed: job 1 (model.encoder.weights="
                                                    "imagenet): FAILED: "), done.stderr[-3000:]
    assert "EncoderWeightsUnavailable" in last and fcn8.VGG16_IMAGENET_FILE in last
    assert "model.encoder.weights=null" in done.stdout + done.stderr  # the way out, shown to the user
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id], order_by=["start_time"])
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # the sweep's parent run is the other one
    scratch, imagenet = jobs
    assert scratch.data.params["model.encoder.weights"] == "null" and scratch.info.status == "FINISHED"
    assert scratch.info.run_name == "fcn8-ce-shapes-job0 model.encoder.weights=null" and "val_mean_iou" in scratch.data.metrics
    assert int(scratch.data.tags["model.parameters"]) == fcn_params(3, 8, "8s", scratch=True)
    assert imagenet.data.params["model.encoder.weights"] == "imagenet" and imagenet.info.status == "FAILED"
    assert imagenet.info.run_name == "fcn8-ce-shapes-job1 model.encoder.weights=imagenet"
    assert "EncoderWeightsUnavailable" in imagenet.data.tags["error"]
    assert fcn8.VGG16_IMAGENET_FILE in imagenet.data.tags["error"]

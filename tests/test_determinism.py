"""Determinism: the preflight that names ops without a deterministic GPU kernel (it reads the traced
graph, so it runs on a CPU), and `python -m seglab.check_determinism`, which trains twice and compares."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from seglab import losses, metrics
from seglab.cli import check_determinism
from seglab.util import threads
from seglab.config import schema
from seglab.config.check import ConfigError
from seglab.engine import determinism
from tests.conftest import ROOT, TINY, build_model

SIZE, CLASSES = 32, 3


def compiled(model: keras.Model) -> keras.Model:
    """Compiled as seglab.train compiles it: seglab's loss and metrics."""
    model.compile(optimizer=keras.optimizers.Adam(), loss=losses.CrossEntropy(num_classes=CLASSES),
                  metrics=metrics.segmentation_metrics(CLASSES, ["a", "b", "c"]))
    return model


def test_nearest_resize_gradient_is_named_with_its_layer():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="encoder_conv")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Resizing(SIZE, SIZE, interpolation="nearest", name="nearest_up")(x)
    outputs = keras.layers.Conv2D(CLASSES, 1)(x)
    (finding,) = determinism.find(compiled(keras.Model(inputs, outputs)), SIZE)
    assert (finding.op_type, finding.layer) == ("ResizeNearestNeighborGrad", "nearest_up")
    assert "Conv2DTranspose" in finding.fix


def test_a_scatter_in_the_step_is_named():
    """tf.math.confusion_matrix scatters (ScatterNd), which op determinism moves to the CPU."""
    import tensorflow as tf

    class ScatterCounts(keras.layers.Layer):
        def call(self, x):
            labels = tf.reshape(tf.argmax(x, axis=-1), [-1])
            counts = tf.math.confusion_matrix(labels, labels, num_classes=CLASSES, dtype=tf.float32)
            return x + tf.reduce_sum(counts) * 0.0

    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = ScatterCounts(name="counts")(keras.layers.Conv2D(CLASSES, 1)(inputs))
    findings = determinism.find(compiled(keras.Model(inputs, outputs)), SIZE)
    assert {(f.op_type, f.layer) for f in findings} >= {("ScatterNd", "counts")}


@pytest.mark.parametrize("build", [
    lambda: build_model("unet", CLASSES, SIZE, base_filters=4, depth=2),
    lambda: build_model("fcn8", CLASSES, SIZE, fc_width=16, encoder={"weights": None}),
    lambda: build_model("unet_mobilenet", CLASSES, SIZE, alpha=0.35, encoder={"weights": None}),
], ids=["unet", "fcn8", "unet_mobilenet"])
def test_seglab_models_have_only_deterministic_ops(build):
    assert determinism.find(compiled(build()), SIZE) == []


def test_comparison_sees_a_one_ulp_difference(tmp_path):
    weights = np.linspace(0, 1, 10, dtype=np.float32)
    nudged = weights.copy()
    nudged[3] = np.nextafter(nudged[3], np.float32(2))
    np.savez(tmp_path / "a.npz", **{"model/0": weights, "run_id": "run-a"})
    np.savez(tmp_path / "b.npz", **{"model/0": weights, "run_id": "run-b"})  # two runs: their ids are not compared
    np.savez(tmp_path / "c.npz", **{"model/0": nudged, "run_id": "run-a"})
    assert check_determinism.weights_difference(tmp_path / "a.npz", tmp_path / "b.npz") is None
    assert "model/0" in check_determinism.weights_difference(tmp_path / "a.npz", tmp_path / "c.npz")
    history = {"val_loss": [(0, 0.5), (1, 0.25)], "epoch_seconds": [(0, 1.0), (1, 2.0)]}
    other_clock = {"val_loss": [(0, 0.5), (1, 0.25)], "epoch_seconds": [(0, 9.0), (1, 9.0)]}
    assert check_determinism.metrics_difference(history, other_clock) is None  # wall-clock metrics are not compared
    drifted = {"val_loss": [(0, 0.5), (1, float(np.nextafter(0.25, 1.0)))]}
    assert "val_loss at epoch 1" in check_determinism.metrics_difference(history, drifted)


@pytest.mark.slow
def test_check_determinism_on_a_tiny_run(tmp_path):
    # One intra-op thread, as a sweep's job gets (docs/sweeps.md): each run records it, the verdict names it.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1"}
    for name in ("TF_NUM_INTEROP_THREADS", "MLFLOW_LOGGING_LEVEL"):  # the user's environment: MLflow's INFO lines on
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "seglab.check_determinism", *TINY], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = done.stdout.strip().splitlines()[-1]
    assert (done.stdout + done.stderr).strip() == verdict  # the verdict alone: no "INFO mlflow.store.db.utils: Creating ..."
    assert verdict.startswith("deterministic: two runs of"), verdict
    assert f"with 1 intra-op and {threads.schedulable_cores()} inter-op threads ended with bit-identical" in verdict
    assert not list(tmp_path.iterdir())  # both runs lived in a temporary directory


# seglab's own compile of the default model with trainer.jit_compile=true, op determinism on or off (it cannot be turned
# off again in a process, hence one process each); prints what Keras compiled.
_COMPILE_WITH_XLA = """
import sys
from hydra.utils import instantiate
from seglab.config import schema
from seglab.engine import runtime, train
cfg = schema.compose(["trainer.jit_compile=true", "model.depth=2", "model.base_filters=4"], check=False)
runtime.setup(cfg.seed, sys.argv[1] == "true", cfg.trainer.precision)
model = instantiate(cfg.model, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size)
train.compile_model(cfg, model, instantiate(cfg.loss, num_classes=cfg.data.num_classes), steps_per_epoch=1)
print("xla" if model.jit_compile else "no xla")
"""


@pytest.mark.parametrize("deterministic, compiled_as", [("true", "no xla"), ("false", "xla")])
def test_keras_compiles_xla_only_without_op_determinism_as_the_config_check_says(deterministic, compiled_as):
    """Why the config refuses trainer.jit_compile=true with deterministic=true; when Keras honours XLA under op
    determinism, the first case fails and the check in seglab/config/schema.py can go."""
    done = subprocess.run([sys.executable, "-c", _COMPILE_WITH_XLA, deterministic], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == compiled_as
    allowed = deterministic == "false"
    if allowed:
        assert schema.compose(["trainer.jit_compile=true", f"deterministic={deterministic}"]).trainer.jit_compile
    else:
        with pytest.raises(ConfigError, match="trainer.jit_compile=True .*set deterministic=false to use XLA"):
            schema.compose(["trainer.jit_compile=true", f"deterministic={deterministic}"])

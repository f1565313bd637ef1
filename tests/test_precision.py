"""trainer.precision: Keras mixed-precision policies, float32 logits, losses and metrics, finite Dice."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra.utils import instantiate

from seglab.config import schema
from seglab.engine import runtime, train
from seglab.losses import Dice
from seglab.metrics import segmentation_metrics
from seglab.models.flops import layers_of
from tests.conftest import TINY, run_cli

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
FLOAT16_MAX = 65504.0
# The Dice loss of a mixed_float16 run against float32, one step from the same start: measured 4e-4 apart;
# with the loss's sums in float16 (inf past 65504, and stalled well before) measured 0.4-0.5 apart.
DICE_FLOAT16_ATOL = 0.02


@pytest.fixture
def policy():
    """Set a policy for one test, and float32 again after it (the policy is process state)."""
    yield runtime.set_precision
    runtime.set_precision("float32")


def test_unknown_precision_is_rejected_naming_the_key(compose_cfg):
    with pytest.raises(schema.ConfigError, match=r"trainer.precision='float8' is not allowed: choose one of float32, "):
        schema.validate(compose_cfg("trainer.precision=float8"))


def test_soft_dice_is_finite_where_float16_sums_overflow():
    """The NaN trap: over more than 65504 pixels a class's float16 sum of squares is inf (inf/inf = NaN).
    seglab's Dice sums in float32, so float16 logits give the float32 loss and finite gradients."""
    labels = np.zeros((16, 64, 64), np.int32)  # 65536 pixels of class 0
    logits32 = np.random.default_rng(0).normal(size=(*labels.shape, 3)).astype(np.float32)
    assert np.isinf(np.sum(np.ones(labels.size, np.float16), dtype=np.float16))  # what float16 sums would do
    logits16 = tf.Variable(tf.constant(logits32, tf.float16))
    with tf.GradientTape() as tape:
        loss = Dice(3)(labels, logits16)
    grad = tape.gradient(loss, logits16)
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    assert np.all(np.isfinite(grad.numpy().astype(np.float32)))
    expected = float(Dice(3)(labels, tf.constant(logits16.numpy().astype(np.float32))))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("model", ["unet", "unet_mobilenet", "fcn8"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_model_computes_in_the_policy_with_float32_logits(compose_cfg, policy, model, precision):
    cfg = compose_cfg(f"model={model}", "data.image_size=32", *(("model.encoder.weights=null",) if model != "unet" else ()),
                      *(("model.fc_width=8",) if model == "fcn8" else ()))
    policy(precision)
    net = instantiate(cfg.model, num_classes=3, image_size=32)
    assert net.dtype_policy.name == precision
    assert net.layers[-1].dtype_policy.name == "float32"  # the logits layer
    assert net(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"
    compute = {layer.compute_dtype for layer in layers_of(net) if isinstance(layer, keras.layers.Conv2D)}
    assert precision == "float32" or {"float16", "bfloat16"} & compute


@pytest.mark.parametrize("precision", PRECISIONS)
def test_loss_scaling_only_for_float16_and_metrics_in_float32(compose_cfg, policy, precision):
    cfg = compose_cfg("data.image_size=32", "model.depth=2", "model.base_filters=4")
    policy(precision)
    net = instantiate(cfg.model, num_classes=3, image_size=32)
    metrics = segmentation_metrics(3, ["a", "b", "c"])
    net.compile(optimizer=train.build_optimizer(cfg, steps_per_epoch=1), loss=Dice(3), metrics=metrics)
    assert isinstance(net.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    assert all(m.dtype == "float32" for m in metrics)


@pytest.mark.slow
# float32: every other training test runs it.
# focal, tversky, lovasz: issue 24's losses train in half precision (their float32 runs: tests/test_losses.py).
@pytest.mark.parametrize("precision,loss", [("mixed_bfloat16", "ce"), ("mixed_float16", "dice"), ("mixed_float16", "focal"),
                                            ("mixed_bfloat16", "tversky"), ("mixed_float16", "lovasz")])
def test_tiny_training_per_precision_has_finite_metrics(tmp_path, policy, precision, loss):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli(*TINY, f"trainer.precision={precision}", f"loss={loss}", f"tracking.uri={uri}", "tracking.log_model=false",
            f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["trainer.precision"] == precision
    for key in ("train_loss", "val_loss", "val_mean_iou", "train_images_per_second"):
        history = [m.value for m in client.get_metric_history(run.info.run_id, key)]
        assert len(history) == 2 and np.all(np.isfinite(history)), (key, history)
    policy(precision)  # the saved layers record their own policies; load as the job built them
    best = keras.saving.load_model(tmp_path / "run/checkpoints/best.keras", compile=False)
    assert best.dtype_policy.name == precision and best.get_layer("logits").dtype_policy.name == "float32"
    assert best(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"


@pytest.mark.slow
def test_mixed_float16_dice_training_is_finite_and_as_float32_where_float16_sums_would_overflow(tmp_path):
    """The trap in a real run: a batch of 8 images of 128 x 128 pixels, so a class's Dice sums run over more
    pixels (131,072) than float16 can count.  Summed in float16 they are inf, NaN once the prediction is
    confident (inf/inf); before that the loss is finite but wrong, so it is also compared with the same run
    in float32 (same initial weights and batch)."""
    size, batch = 128, 8
    assert batch * size * size > FLOAT16_MAX
    from mlflow import MlflowClient

    losses = {}
    for precision in ("float32", "mixed_float16"):
        uri = f"sqlite:///{tmp_path}/{precision}.db"
        run_cli(*TINY, f"data.image_size={size}", f"trainer.batch_size={batch}", f"data.source.train_size={batch}",
                f"data.source.val_size={batch}", "trainer.epochs=1", "trainer.mask_samples=0", f"trainer.precision={precision}",
                "loss=dice", "tracking.log_model=false", f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/{precision}",
                cwd=tmp_path)
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
        assert run.info.status == "FINISHED" and run.data.params["loss._target_"] == "seglab.losses.Dice"
        history = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
                   for key in ("train_loss", "val_loss", "val_mean_dice")}
        assert all(len(h) == 1 and np.isfinite(h[0]) for h in history.values()), (precision, history)
        losses[precision] = history
    for key in ("train_loss", "val_loss"):
        assert losses["mixed_float16"][key][0] == pytest.approx(losses["float32"][key][0], abs=DICE_FLOAT16_ATOL), (key, losses)

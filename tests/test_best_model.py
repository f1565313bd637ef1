"""tracking.log_model=best|last|false: the MLflow model is the best epoch's weights (by optimize_metric)
unless asked otherwise, and the run says which epoch it came from."""

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from seglab.tracking import tags
from tests.conftest import TINY, run_cli

# On TINY with the first design's U-Net (no batch norm, constant rate), validation mIoU peaks in the first
# epoch and falls after it (checked below), so the best and the last weights differ.
ARGS = (*TINY, "trainer.epochs=3", "trainer.mask_samples=0", "model.batch_norm=false", "scheduler=constant")


def train(tmp_path, log_model):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli(*ARGS, f"tracking.log_model={log_model}", f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/out", cwd=tmp_path)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    return client, run, uri


def weights(model) -> dict[int, np.ndarray]:
    """Weights by their index in model.variables (the order of last.state.npz), without the dropout
    layers' random-generator states, which are not weights and are not saved in .keras files."""
    return {i: v.numpy() for i, v in enumerate(model.variables) if "seed_generator" not in v.path}


def logged_model_scores(client, run) -> dict[str, dict[str, float]]:
    """val_mean_iou and val_loss of each logged model of `run` (`model`, `served`), as MLflow's model page shows them."""
    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    return {m.name: {s.key: s.value for s in m.metrics or [] if s.key in ("val_mean_iou", "val_loss")}
            for m in found if m.source_run_id == run.info.run_id}


def assert_models_show_epoch(client, run, uri, step: int) -> None:
    """The logged models carry the run's val_mean_iou and val_loss of epoch `step` (0-based), the weights they hold."""
    mlflow.set_tracking_uri(uri)
    expected = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}[step] for key in ("val_mean_iou", "val_loss")}
    assert logged_model_scores(client, run) == {"model": expected, "served": expected}


def logged_weights(run, uri):
    mlflow.set_tracking_uri(uri)
    return weights(mlflow.keras.load_model(f"runs:/{run.info.run_id}/model"))


@pytest.mark.slow
def test_logged_model_is_the_best_checkpoint(tmp_path):
    client, run, uri = train(tmp_path, "best")
    history = sorted(client.get_metric_history(run.info.run_id, "val_mean_iou"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2]
    best_step = max(history, key=lambda m: m.value).step  # the first of equal maxima, as "improved" is strict
    assert best_step != 2, "the premise: TINY's best epoch is not its last"
    assert run.data.tags[tags.BEST_STEP] == str(best_step), [m.value for m in history]
    assert run.data.tags[tags.MODEL_STEP] == str(best_step) and run.data.tags[tags.MODEL_WEIGHTS] == "best"
    assert_models_show_epoch(client, run, uri, best_step)
    best = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoints/best.keras", tracking_uri=uri)
    import keras

    expected = weights(keras.models.load_model(best, compile=False))
    got = logged_weights(run, uri)
    assert got.keys() == expected.keys()
    for i, a in got.items():
        np.testing.assert_array_equal(a, expected[i])
    with np.load(tmp_path / "out/checkpoints/last.state.npz") as last:  # and not the last epoch's
        assert any(not np.array_equal(a, last[f"model/{i}"]) for i, a in got.items())


@pytest.mark.slow
def test_log_model_last_logs_the_last_epoch(tmp_path):
    client, run, uri = train(tmp_path, "last")
    assert run.data.tags[tags.MODEL_STEP] == "2" and run.data.tags[tags.MODEL_WEIGHTS] == "last"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_mean_iou")}
    assert history[2] != history[0], "the premise: the last epoch scores otherwise than the first (MLflow's default step)"
    assert_models_show_epoch(client, run, uri, 2)
    got = logged_weights(run, uri)
    with np.load(tmp_path / "out/checkpoints/last.state.npz") as last:
        assert got and all(f"model/{i}" in last for i in got)
        for i, a in got.items():
            np.testing.assert_array_equal(a, last[f"model/{i}"])
# tracking.log_model=false: tests/test_debug.py (+debug=fast logs no model).

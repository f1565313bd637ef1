"""`python -m seglab.evaluate` on a model from the tracking stack: a new run linked to the training run.
The entry point is called in this process (TensorFlow is loaded once); the last test runs the command line."""

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from seglab.metrics import scores
from tests.conftest import ROOT

SMALL = ("data.image_size=32", "data.source.train_size=8", "data.source.val_size=8", "trainer.batch_size=8")


def eval_runs(client, run_id):
    return client.search_runs(
        [client.get_run(run_id).info.experiment_id], filter_string=f"tags.`seglab.training_run_id` = '{run_id}'"
    )


@pytest.mark.slow
def test_evaluate_logs_test_scores_and_confusion_matrix_to_a_linked_run(tracking_stack, stack_run, capsys):
    from seglab.cli import evaluate

    run_id, _, _ = stack_run
    argv = [f"model_uri=runs:/{run_id}/model", "data=shapes", *SMALL, "data.source.test_size=12", f"tracking.uri={tracking_stack.uri}"]
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "test split (12,288 pixels)" in printed and "test_mean_iou" in printed
    client = MlflowClient(tracking_stack.uri)
    (run,) = [r for r in eval_runs(client, run_id) if r.data.tags["seglab.split"] == "test"]
    assert run.info.status == "FINISHED" and run.info.run_name == "eval-unet-ce-shapes"
    saved = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="confusion_matrix.json", tracking_uri=tracking_stack.uri)).read())
    cm = np.array(saved["counts"])
    assert cm.shape == (3, 3) and cm.sum() == 12 * 32 * 32
    expected = scores(cm)
    assert run.data.metrics["test_mean_iou"] == pytest.approx(expected["mean_iou"])
    assert run.data.metrics["test_pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"])
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_without_a_test_split_evaluate_uses_validation_and_says_so(tracking_stack, stack_run, caplog):
    from seglab.cli import evaluate

    run_id, _, _ = stack_run
    argv = [f"model_uri=runs:/{run_id}/model", "data=shapes", *SMALL, "data.source.test_size=0", f"tracking.uri={tracking_stack.uri}"]
    assert evaluate.main(argv) == 0
    assert "has no test split; evaluating on the validation split" in caplog.text
    client = MlflowClient(tracking_stack.uri)
    (run,) = [r for r in eval_runs(client, run_id) if r.data.tags["seglab.split"] == "val"]
    assert "val_mean_iou" in run.data.metrics and "test_mean_iou" not in run.data.metrics


def test_evaluate_command_line_without_model_uri_says_how_to_call_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "seglab.evaluate", "data=shapes"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "give model_uri=<uri> exactly once; usage: `python -m seglab.evaluate model_uri=" in done.stderr


@pytest.mark.slow
def test_the_data_is_built_at_the_models_size_whatever_data_image_size_says(tracking_stack, stack_run, caplog):
    """Without data.image_size=32 the 32-px model must see the same test images, generated at 32 px
    (not generated at the default 64 and shrunk, which thins the boundary class), and no size check
    against the default model's depth may stop it."""
    import logging

    from seglab.cli import evaluate

    caplog.set_level(logging.INFO, logger="seglab.engine.evaluate")
    run_id, _, _ = stack_run
    client = MlflowClient(tracking_stack.uri)
    common = [f"model_uri=runs:/{run_id}/model", "data=shapes", "data.source.train_size=8", "data.source.val_size=8",
              "data.source.test_size=4", f"tracking.uri={tracking_stack.uri}"]
    matrices = []
    for size in ("data.image_size=32", "data.image_size=40"):  # 40: no multiple of the default U-Net's 16
        before = {r.info.run_id for r in eval_runs(client, run_id)}
        assert evaluate.main([*common, size]) == 0
        (run,) = [r for r in eval_runs(client, run_id) if r.info.run_id not in before]
        matrices.append(json.loads(open(mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="confusion_matrix.json", tracking_uri=tracking_stack.uri)).read())["counts"])
    assert "data.image_size=40 becomes 32" in caplog.text
    assert matrices[0] == matrices[1]


@pytest.mark.slow
def test_on_the_shared_server_a_registered_version_gets_the_alias_and_loads_by_it(tracking_stack, stack_run, capsys):
    """The registry on PostgreSQL + S3: the training run's served model registered, evaluated with
    set_alias, and loaded back through the alias."""
    from seglab import tracking
    from seglab.cli import evaluate
    from seglab.tracking import registry

    run_id, _, _ = stack_run
    mlflow.set_tracking_uri(tracking_stack.uri)
    version = registry.register(f"runs:/{run_id}/served", "stack-segmodel", {"val_mean_iou": 0.5})
    argv = [f"model_uri=models:/stack-segmodel/{version}", "set_alias=champion", "data=shapes", *SMALL,
            "data.source.test_size=4", f"tracking.uri={tracking_stack.uri}"]
    assert evaluate.main(argv) == 0
    assert f"models:/stack-segmodel@champion -> version {version}" in capsys.readouterr().out
    client = MlflowClient(tracking_stack.uri, registry_uri=tracking_stack.uri)
    assert str(client.get_model_version_by_alias("stack-segmodel", "champion").version) == version
    model = tracking.load_model("models:/stack-segmodel@champion", tracking_stack.uri)
    assert model.input_shape[1:] == (32, 32, 3)


@pytest.mark.slow
def test_slide_mode_scores_the_split_at_data_image_size_in_windows_of_the_models_size(tracking_stack, stack_run):
    """A 32-px model on 64-px test images, windows every 32 px: each quadrant is one window, so the logged
    confusion matrix is that of the model applied to each quadrant, computed here without seglab.inference."""
    from hydra.utils import instantiate

    from seglab import tracking
    from seglab.cli import evaluate
    from seglab.config import schema
    from seglab.data import pipeline

    run_id, _, _ = stack_run
    data = ["data=shapes", "data.image_size=64", "data.source.train_size=8", "data.source.val_size=8", "data.source.test_size=4"]
    client = MlflowClient(tracking_stack.uri)
    before = {r.info.run_id for r in eval_runs(client, run_id)}
    assert evaluate.main([f"model_uri=runs:/{run_id}/model", *data, "inference.mode=slide", "inference.stride=32",
                          f"tracking.uri={tracking_stack.uri}"]) == 0
    (run,) = [r for r in eval_runs(client, run_id) if r.info.run_id not in before]
    assert (run.data.params["inference.mode"], run.data.params["inference.stride"]) == ("slide", "32")
    logged = np.array(json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="confusion_matrix.json", tracking_uri=tracking_stack.uri)).read())["counts"])

    model = tracking.load_model(f"runs:/{run_id}/model", tracking_stack.uri)
    splits = instantiate(schema.compose(data, check=False).data.source)
    expected = np.zeros((3, 3), np.int64)
    for images, masks in pipeline.make(splits.test, image_size=64, batch_size=4, training=False, seed=0, deterministic=True, cache=None):
        quadrants = [images[:, y : y + 32, x : x + 32] for y in (0, 32) for x in (0, 32)]
        labels = [np.asarray(model(q, training=False)).argmax(-1) for q in quadrants]
        predicted = np.concatenate([np.concatenate(labels[:2], 2), np.concatenate(labels[2:], 2)], 1)
        np.add.at(expected, (np.asarray(masks).ravel(), predicted.ravel()), 1)
    assert logged.sum() == 4 * 64 * 64
    np.testing.assert_array_equal(logged, expected)


def test_evaluate_refuses_a_bad_inference_option_before_tensorflow():
    from seglab.cli import evaluate
    from seglab.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"inference\.mode=tile is not allowed: choose one of resize, slide\."):
        evaluate.parse(["model_uri=/nowhere", "data=shapes", "inference.mode=tile"])

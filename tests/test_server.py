"""seglab against the shared tracking stack (MLflow on PostgreSQL, artifacts proxied to S3),
started as local processes from the compose settings; and what happens when the server is not
there, or goes away in the middle of a run."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import ROOT, TINY, run_cli
from tests.tracking_stack import free_port, start, stop, wait_http


@pytest.mark.slow
def test_run_lands_in_postgres_and_artifacts_in_the_bucket(tracking_stack, stack_run):
    run_id, out, _ = stack_run
    client = MlflowClient(tracking_stack.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["model._target_"] == "seglab.models.unet.build"
    assert [m.step for m in client.get_metric_history(run_id, "val_mean_iou")] == [0, 1]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0, 1]
    # Artifacts go through the server's proxy: the client needs no S3 credentials.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    masks = [a.path for a in client.list_artifacts(run_id, "images") if "val_masks" in a.path and a.path.endswith(".png")]
    assert len(masks) >= 2
    grid = np.asarray(Image.open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=masks[0],
                                                                      tracking_uri=tracking_stack.uri)))
    assert grid.shape[0] >= 2 * 32 and grid.shape[1] > 3 * 32
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {"checkpoints/best.keras", "checkpoints/last.state.npz"}
    # ... and they really are in the S3 bucket behind it.
    keys = [o["Key"] for o in tracking_stack.s3.list_objects_v2(Bucket=tracking_stack.bucket)["Contents"]]
    assert any(k.endswith(f"{run_id}/artifacts/checkpoints/best.keras") for k in keys), keys[:20]


@pytest.mark.slow
def test_model_from_the_stack_loads_back(tracking_stack, stack_run):
    run_id, _, _ = stack_run
    mlflow.set_tracking_uri(tracking_stack.uri)
    model = mlflow.keras.load_model(f"runs:/{run_id}/model")
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (2, 32, 32, 3)


def test_server_down_at_start_fails_in_seconds_naming_the_uri(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = run_cli(*TINY, f"tracking.uri={uri}", cwd=tmp_path, check=False, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode != 0
    assert f"tracking.uri={uri} is not reachable" in done.stderr
    assert seconds < 60, f"took {seconds:.0f} s"  # generous: Python, Hydra and MLflow start-up on a busy machine; no retries


@pytest.mark.slow
def test_server_going_away_mid_run_lets_training_finish(tracking_stack, tmp_path):
    """A server is killed after the first epoch is logged: training still runs every epoch, keeps
    its checkpoints, says which logging failed, and exits in bounded time."""
    server = tracking_stack.spare_server()
    uri = tracking_stack.spare_uri
    epochs = 10
    log = open(tmp_path / "train.log", "w")  # a file, not a pipe nobody reads
    proc = subprocess.Popen(
        [sys.executable, "-m", "seglab", *TINY, f"trainer.epochs={epochs}", f"tracking.uri={uri}",
         "tracking.experiment=server-goes-away", f"hydra.run.dir={tmp_path}/out"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        client, deadline = MlflowClient(uri), time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            experiment = client.get_experiment_by_name("server-goes-away")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and client.get_metric_history(runs[0].info.run_id, "train_loss"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("training never logged an epoch:\n" + (tmp_path / "train.log").read_text()[-3000:])
        stop(server)
        proc.wait(timeout=240)
    finally:
        proc.kill()
        stop(server)
        log.close()
    output = (tmp_path / "train.log").read_text()
    assert proc.returncode == 0, output[-3000:]
    # What was being logged when the server went: an epoch's metrics, mask image or checkpoint, or the heartbeat.
    what = r"((metrics|val_masks image|checkpoint \S+) of epoch \d+|tags seglab\.heartbeat)"
    assert re.search(rf"MLflow logging failed while logging {what} to tracking.uri=" + re.escape(uri), output)
    assert "is incomplete: logging failed at" in output
    with np.load(tmp_path / "out/checkpoints/last.state.npz") as state:
        assert int(state["epoch"]) == epochs  # every epoch trained
    assert (tmp_path / "out/checkpoints/best.keras").stat().st_size > 0


@pytest.mark.slow
def test_logged_model_is_servable_and_answers_a_json_request(tracking_stack, stack_run, tmp_path):
    """`mlflow models serve -m runs:/<id>/model --env-manager local`, and the request docs/predict-evaluate-serve.md documents."""
    run_id, _, _ = stack_run
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_stack.uri, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the server runs `uvicorn` from PATH
    server = start([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager", "local",
                    "-h", "127.0.0.1", "-p", str(port)], tmp_path / "serve.log", env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = np.array(json.loads(response.read())["predictions"], np.float32)
    finally:
        stop(server)
    assert predictions.shape == (2, 32, 32, 3)  # logits per class
    mlflow.set_tracking_uri(tracking_stack.uri)
    local = mlflow.keras.load_model(f"runs:/{run_id}/model").predict(images, verbose=0)
    np.testing.assert_allclose(predictions, local, rtol=1e-4, atol=1e-4)

"""From a training to a served model on the SQLite default: `tracking.register_as` registers the
served model with the run's scores (and the run logs its datasets, per-image table and worst images),
`seglab.evaluate ... set_alias=champion` moves the alias, tools load `models:/<name>@champion`, and
`mlflow models serve` answers a POST of PNG and JPEG files with masks at their sizes."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from seglab import metrics
from seglab.util import visualize
from tests.conftest import ROOT, TINY, run_cli

NAME = "segmodel"
SERVE_TIMEOUT_S = 240  # `mlflow models serve` imports TensorFlow and loads the model before it answers


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training registered as NAME: (tracking URI, its run)."""
    cwd = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{cwd}/mlflow.db"
    run_cli(*TINY, f"tracking.uri={uri}", f"tracking.register_as={NAME}", f"hydra.run.dir={cwd}/out", cwd=cwd)
    mlflow.set_tracking_uri(uri)  # for get_model_info below
    client = MlflowClient(uri, registry_uri=uri)  # the registry of that store, not the process default
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    return uri, run


def artifact(uri: str, run_id: str, path: str) -> str:
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri)


def artifact_json(uri: str, run_id: str, path: str):
    with open(artifact(uri, run_id, path)) as f:
        return json.load(f)


def table_of(uri: str, run, artifact_file: str):
    """A table logged with log_table, as the UI reads it (a pandas DataFrame)."""
    return MlflowClient(uri).load_table(run.info.experiment_id, artifact_file, run_ids=[run.info.run_id])


@pytest.mark.slow
def test_training_registers_the_served_model_with_its_scores_and_logs_datasets_and_worst_images(trained):
    uri, run = trained
    client = MlflowClient(uri, registry_uri=uri)  # the registry of that store, not the process default
    version = client.get_model_version(NAME, "1")
    cm = np.array(artifact_json(uri, run.info.run_id, "confusion_matrix.json")["counts"])
    assert float(version.tags["val_mean_iou"]) == pytest.approx(metrics.scores(cm)["mean_iou"])
    assert version.tags["run_id"] == run.info.run_id
    assert mlflow.models.get_model_info(f"models:/{NAME}/1").signature.inputs.input_names() == ["image"]

    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert {name: json.loads(i.dataset.profile)["num_images"] for name, i in inputs.items()} == {"shapes-train": 48, "shapes-val": 16}
    assert [t.value for t in inputs["shapes-val"].tags if t.key == "mlflow.data.context"] == ["validation"]

    table = table_of(uri, run, "per_image_val.json")
    assert len(table) == 16 and table["pixels"].sum() == cm.sum()
    grid = np.asarray(Image.open(artifact(uri, run.info.run_id, "worst_val.png")))
    gap = visualize.SEPARATOR_PX
    assert grid.shape == (8 * 32 + 7 * gap, 4 * 32 + 3 * gap, 3)  # trainer.worst_samples=8 rows, 4 panels
    worst = artifact_json(uri, run.info.run_id, "worst_val.json")["rows"]
    assert [r["mean_iou"] for r in worst] == pytest.approx(sorted(table["mean_iou"])[:8])  # the table keeps 10 digits


@pytest.mark.slow
def test_evaluate_moves_the_alias_and_the_tools_load_the_model_by_alias(trained, tmp_path, capsys):
    from seglab import errors, tracking
    from seglab.cli import evaluate, predict

    uri, run = trained
    common = ["data=shapes", "data.source.train_size=4", "data.source.val_size=4", "data.source.test_size=6",
              "trainer.worst_samples=3", f"tracking.uri={uri}"]
    with pytest.raises(SystemExit) as exited:  # as `python -m seglab.evaluate` runs it: one line, exit code 2
        errors.main(evaluate.main, [f"model_uri=runs:/{run.info.run_id}/model", "set_alias=champion", *common], prog="seglab.evaluate")
    assert exited.value.code == errors.EXIT_USER_ERROR
    assert "set_alias needs a registered model" in capsys.readouterr().err

    assert evaluate.main([f"model_uri=models:/{NAME}/1", "set_alias=champion", *common]) == 0
    client = MlflowClient(uri, registry_uri=uri)  # the registry of that store, not the process default
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    (evaluation,) = client.search_runs([run.info.experiment_id], filter_string="tags.`seglab.split` = 'test'")
    assert evaluation.data.tags["seglab.model_version"] == f"{NAME}/1"
    assert evaluation.data.tags["seglab.training_run_id"] == run.info.run_id
    (test_input,) = evaluation.inputs.dataset_inputs
    assert test_input.dataset.name == "shapes-test" and json.loads(test_input.dataset.profile)["num_images"] == 6
    table = table_of(uri, evaluation, "per_image_test.json")
    pooled = (table["pixel_accuracy"] * table["pixels"]).sum() / table["pixels"].sum()
    assert pooled == pytest.approx(evaluation.data.metrics["test_pixel_accuracy"])

    model = tracking.load_model(f"models:/{NAME}@champion", uri)
    assert model.input_shape[1:] == (32, 32, 3) and model.output_shape[-1] == 3
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(tmp_path / "a.png")
    assert predict.main([f"model_uri=models:/{NAME}@champion", f"input={tmp_path / 'a.png'}", f"output={tmp_path}/out",
                         f"tracking.uri={uri}"]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "a.png_mask.png")).shape == (10, 14)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.slow
def test_mlflow_models_serve_answers_png_and_jpeg_files_with_masks_at_their_sizes(trained, tmp_path):
    from seglab import tracking
    from seglab import inference
    from seglab.tracking import registry

    uri, _ = trained
    registry.set_alias(NAME, "1", "champion", uri)  # as the evaluation test does; this test stands alone
    rng = np.random.default_rng(0)
    png = rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)
    jpeg = rng.integers(0, 256, (70, 33, 3), dtype=np.uint8)
    (tmp_path / "wide.png").write_bytes(encoded(png, "PNG"))
    (tmp_path / "tall.jpg").write_bytes(encoded(jpeg, "JPEG"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the server runs `uvicorn` from PATH
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        files = [(tmp_path / "wide.png").read_bytes(), (tmp_path / "tall.jpg").read_bytes()]
        records = [{"image": base64.b64encode(data).decode()} for data in files]
        answer = post(f"{url}/invocations", {"dataframe_records": records})["predictions"]
        masks = [np.asarray(Image.open(io.BytesIO(base64.b64decode(row["mask"])))) for row in answer]
        assert [m.shape for m in masks] == [(20, 50), (70, 33)]
        assert [(row["height"], row["width"]) for row in answer] == [(20, 50), (70, 33)]
        assert all(set(np.unique(m)) <= {0, 1, 2} for m in masks)
        # The same masks as `python -m seglab.predict` gives (one preprocessing), for the lossless PNG.
        expected = inference.segment(tracking.load_model(f"models:/{NAME}@champion", uri), [png])[0]
        np.testing.assert_array_equal(masks[0], expected)

        scored = post(f"{url}/invocations", {"dataframe_records": records[1:], "params": {"scores": True}})["predictions"][0]
        per_class = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in scored["scores"]]
        assert len(per_class) == 3 and all(p.shape == (70, 33) for p in per_class)
        assert np.abs(np.sum(per_class, axis=0, dtype=int) - 255).max() <= 3  # probabilities x 255 sum to 255 (rounding)

        with pytest.raises(urllib.error.HTTPError) as bad:
            post(f"{url}/invocations", {"dataframe_records": [{"image": base64.b64encode(b"not an image").decode()}]})
        assert bad.value.code == 400 and "image 0 of the request is not a readable image" in bad.value.read().decode()
        # Malformed requests: HTTP 400 saying what to send, never a stack trace in the body.
        from seglab.tracking import served
        from tests.test_served import png_header_only

        side = int(served.MAX_PIXELS ** 0.5) + 1
        for body, what in [({"dataframe_records": [{"image": base64.b64encode(png_header_only(side, side)).decode()}]},
                            f"limit of {served.MAX_PIXELS:,}"),
                           ({"dataframe_records": [{"image": "%%% not base64"}]}, "base64"),
                           ({"dataframe_records": [{"pixels": [1, 2, 3]}]}, "image"),
                           ({"instances": "not a table"}, "")]:
            with pytest.raises(urllib.error.HTTPError) as bad:
                post(f"{url}/invocations", body)
            text = bad.value.read().decode()
            assert bad.value.code == 400 and what in text and "Traceback" not in text and "stack_trace" not in text, text[:3000]
    finally:
        os.killpg(server.pid, 9)  # the server and its uvicorn worker: the group this test started
        server.wait(timeout=30)
        log.close()

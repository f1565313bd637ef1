"""tracking.Run's handling of a store that fails: which errors mean "the server is gone"."""

import os

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from seglab import tracking
from seglab.tracking import sweeps as sweep_runs


def wrapped(cause: BaseException) -> MlflowException:
    """What MLflow's REST client raises: its own exception, chained to the cause."""
    try:
        try:
            raise cause
        except Exception as err:
            raise MlflowException(f"API request to http://127.0.0.1:1/api failed with exception {err}")
    except MlflowException as raised:
        return raised


@pytest.mark.parametrize("err", [
    wrapped(requests.exceptions.ConnectionError("connection refused")),
    wrapped(requests.exceptions.ReadTimeout("read timed out")),
    MlflowException("service unavailable", error_code=TEMPORARILY_UNAVAILABLE),
    OSError(28, "No space left on device"),
])
def test_outages_are_store_unavailable(err):
    assert tracking.store_unavailable(err)


@pytest.mark.parametrize("err", [
    MlflowException("param value too long", error_code=INVALID_PARAMETER_VALUE),
    MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST),
])
def test_rejected_requests_are_not(err):
    assert not tracking.store_unavailable(err)


def test_http_limits_hold_for_the_run_only(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own choice wins
    with tracking.Run(f"sqlite:///{tmp_path}/m.db", "limits", "run", {}) as run:
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == tracking.store.HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
        run.log_epoch({"loss": 1.0}, 0)
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert run.failed is None


def test_a_server_behind_authentication_is_up_one_that_is_not_mlflow_is_refused_and_a_closed_port_is_down():
    """401 (basic auth) means an MLflow server may be behind it: up.  A web server that answers MLflow's REST path
    with something else (here 501 to every GET) is not a tracking server; only no answer is 'down'."""
    import http.server
    import threading

    class BasicAuth(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.end_headers()

        def log_message(self, *args):
            pass

    for handler, refused in ((BasicAuth, False), (http.server.BaseHTTPRequestHandler, True)):  # the latter answers 501 to GET
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        uri = f"http://127.0.0.1:{server.server_port}"
        try:
            if refused:
                with pytest.raises(tracking.TrackingError, match=f"tracking.uri={uri} answers HTTP but is not an MLflow tracking "
                                                                  "server .* answered HTTP 501"):
                    tracking.check_reachable(uri)
            else:
                tracking.check_reachable(uri)
        finally:
            server.shutdown()
            server.server_close()
    with pytest.raises(tracking.TrackingError, match="127.0.0.1:9 is not reachable"):
        tracking.check_reachable("http://127.0.0.1:9")


def test_report_lookup_refuses_a_run_that_is_not_a_sweep_parent(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    training = client.create_run(client.create_experiment("seglab-shapes"))
    with pytest.raises(tracking.TrackingError, match="not a sweep's parent run"):
        sweep_runs.find_parent_run(uri, training.info.run_id)
    with pytest.raises(tracking.TrackingError, match="quote"):
        sweep_runs.find_parent_run(uri, "it's")


def test_every_experiment_seglab_makes_opens_as_model_training(tmp_path):
    from mlflow import MlflowClient

    from seglab.tracking import tags

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    with tracking.Run(uri, "a-run", "r", {}) as run:
        run.log_metrics({"x": 1.0})
    sweep_runs.start_parent_run(uri, "a-sweep", "s", {}, {})
    sweep_runs.record_failed_run(uri, "a-failed-job", "f", {}, None, ValueError("bad"))
    sweep_runs.create_experiment(uri, "with-artifacts", (tmp_path / "artifacts").as_uri())
    client.create_experiment("made-before")  # as MLflow's set_experiment (or an older seglab) makes one
    client.create_experiment("chosen-in-the-ui", tags={tags.EXPERIMENT_KIND: "genai_development"})
    for name in ("made-before", "chosen-in-the-ui"):
        with tracking.Run(uri, name, "r", {}):
            pass
    kinds = {e.name: e.tags.get(tags.EXPERIMENT_KIND) for e in client.search_experiments()}
    assert kinds == {"Default": None, **dict.fromkeys(("a-run", "a-sweep", "a-failed-job", "with-artifacts", "made-before"),
                                                      tags.EXPERIMENT_KIND_MODEL_TRAINING), "chosen-in-the-ui": "genai_development"}
    assert client.get_experiment_by_name("with-artifacts").artifact_location == (tmp_path / "artifacts").as_uri()


def _tiny_keras_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, name="logits")(inputs))


def test_a_runs_model_is_in_the_keras_3_flavour_and_loads_as_keras_users_load_it(tmp_path):
    """`mlflow.keras.load_model("runs:/<id>/model")`, what a Keras 3 user types (before: KeyError: 'keras');
    pyfunc and seglab's own loader (predict, evaluate) read the same model."""
    import mlflow
    import numpy as np

    uri = f"sqlite:///{tmp_path}/m.db"
    model = _tiny_keras_model()
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    with tracking.Run(uri, "flavour", "r", {}) as run:
        model_uri = run.log_model(model, input_example=x[:1])
    mlflow.set_tracking_uri(uri)
    assert "keras" in mlflow.models.get_model_info(model_uri).flavors
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(mlflow.keras.load_model(f"runs:/{run.run_id}/model").predict(x, verbose=0), expected, rtol=1e-6)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(f"runs:/{run.run_id}/model").predict(x), expected, rtol=1e-6)
    np.testing.assert_allclose(tracking.load_model(f"runs:/{run.run_id}/model", uri).predict(x, verbose=0), expected, rtol=1e-6)


def test_a_model_logged_before_in_the_tensorflow_flavour_still_loads(tmp_path):
    """Runs logged before seglab used the keras flavour hold a `tensorflow` flavour model: predict and evaluate load it."""
    import mlflow
    import numpy as np

    uri = f"sqlite:///{tmp_path}/m.db"
    model = _tiny_keras_model()
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("logged-before")
    with mlflow.start_run() as run:
        mlflow.tensorflow.log_model(model, name="model", input_example=x[:1])  # as seglab logged it before
    assert set(mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model").flavors) == {"tensorflow", "python_function"}
    loaded = tracking.load_model(f"runs:/{run.info.run_id}/model", uri)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)

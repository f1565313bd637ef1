"""Logged models as the tools that use them see them (predict, evaluate): load one from any store,
and find the run that logged it."""

# Lazy imports: the served model's code (TensorFlow) loads only when a model is loaded.

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from seglab.tracking.store import TrackingError, check_reachable, first_line


def check_model_uri(model_uri: str, tracking_uri: str) -> None:
    """A TrackingError when there is no model at `model_uri` (a run id that does not exist, an unknown
    registered name or version, a path without an MLmodel file): asked of the store before TensorFlow
    loads, so the answer comes in seconds."""
    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.models.get_model_info(model_uri)
    except MlflowException as err:
        raise _not_loadable(model_uri, tracking_uri, err) from err


def _not_loadable(model_uri: str, tracking_uri: str, err: Exception) -> TrackingError:
    return TrackingError(
        f"model_uri={model_uri} cannot be loaded from tracking.uri={tracking_uri}: {first_line(err)}. "
        "Use the URI printed at the end of training or shown in the run's Artifacts tab, e.g. runs:/<run id>/model."
    )


def load_model(model_uri: str, tracking_uri: str):
    """A logged seglab model as a Keras model, from any MLflow store (`runs:/<id>/model`,
    `models:/<name>/<version>`, `models:/<name>@<alias>`, `models:/m-<id>`, a local path): the Keras 3
    flavour, the TensorFlow flavour runs logged it in before, or the Keras model inside the served
    (image-taking) pyfunc model."""
    from seglab.tracking.served import keras_model_of

    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        flavors = mlflow.models.get_model_info(model_uri).flavors
        if "keras" in flavors:
            return mlflow.keras.load_model(model_uri)
        if "tensorflow" in flavors:  # logged by seglab before it used the keras flavour
            return mlflow.tensorflow.load_model(model_uri)
        model = keras_model_of(mlflow.pyfunc.load_model(model_uri))
        if model is None:
            raise TrackingError(f"model_uri={model_uri} is not a seglab model (neither Keras nor seglab's served model).")
        return model
    except MlflowException as err:
        raise _not_loadable(model_uri, tracking_uri, err) from err


def model_resize(model_uri: str, tracking_uri: str) -> str:
    """How the model at `model_uri` was trained to see images (data.resize: stretch, fit, crop): its served
    model's model_config, else its training run's `data.resize` param, else stretch (logged before the key)."""
    from seglab.tracking.served import resize_of

    mlflow.set_tracking_uri(tracking_uri)
    info = mlflow.models.get_model_info(model_uri)
    if "resize" in (info.flavors.get("python_function", {}).get("config") or {}):
        return resize_of(info)
    if info.run_id is None:
        return "stretch"
    return mlflow.MlflowClient(tracking_uri).get_run(info.run_id).data.params.get("data.resize", "stretch")


def model_run_id(model_uri: str, tracking_uri: str) -> str | None:
    """The id of the run that logged the model at `model_uri` (None for a model outside any run)."""
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.models.get_model_info(model_uri).run_id


def run_experiment_and_name(run_id: str, tracking_uri: str) -> tuple[str, str]:
    """(experiment name, run name) of a run."""
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    return client.get_experiment(run.info.experiment_id).name, run.info.run_name


def log_export(model_uri: str, tracking_uri: str, path: Path, artifact_path: str) -> str | None:
    """Log an exported file (or directory) to the run that logged the model at `model_uri`, without
    reopening it (its status and end time stay); the run's id, or None for a model outside any run."""
    run_id = model_run_id(model_uri, tracking_uri)
    if run_id is None:
        return None
    client = mlflow.MlflowClient(tracking_uri)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), f"{artifact_path}/{path.name}")
    else:
        client.log_artifact(run_id, str(path), artifact_path)
    return run_id

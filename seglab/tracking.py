"""Everything MLflow, behind a few verbs: `Run.start`, `log_epoch`, `log_masks`, `log_figure`,
`log_artifact`, `log_model`, and the end of the `with` block (FINISHED, FAILED or KILLED; never left RUNNING).

The store is whatever `tracking.uri` says (SQLite file, or an http(s) tracking server with its own
artifact store); nothing here assumes a local file.  No module-level state: each job of a sweep
opens its own `Run`.
"""

from __future__ import annotations

import logging
import os
import signal
import urllib.error
import urllib.request
from typing import Any, Mapping

import mlflow
from mlflow.entities import RunStatus

log = logging.getLogger(__name__)

REACHABILITY_TIMEOUT_S = 5.0


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which URI and what to do."""


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'depth': 4}} -> {'model.depth': 4}; lists are kept as one value."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def check_reachable(uri: str) -> None:
    """Fail in seconds, not after minutes of MLflow's HTTP retries, when a server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACHABILITY_TIMEOUT_S)
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"MLflow tracking server tracking.uri={uri} is not reachable ({err}). Start it (e.g. "
            "`docker compose up -d mlflow`), fix the URI, or log locally with tracking.uri=sqlite:///mlflow.db."
        ) from err


class _Terminated(BaseException):
    """SIGTERM (e.g. a scheduler cancelling the job) turned into an exception so the run ends KILLED."""


class Run:
    """One MLflow run; use as a context manager so its status is always set."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.tags = dict(tags)
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.run_id: str | None = None
        self._previous_sigterm = None

    def __enter__(self) -> "Run":
        check_reachable(self.uri)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)
        run = mlflow.start_run(run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        if _in_main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        if exc_type is None:
            status = RunStatus.FINISHED
        elif issubclass(exc_type, (KeyboardInterrupt, _Terminated)):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
        if exc is not None:
            try:
                mlflow.set_tag("error", f"{exc_type.__name__}: {exc}"[:5000])
            except Exception as tag_err:  # the run must still be ended below
                log.warning("could not record the error on MLflow run %s: %s", self.run_id, tag_err)
        mlflow.end_run(RunStatus.to_string(status))
        if exc_type is _Terminated:
            raise KeyboardInterrupt("terminated by SIGTERM") from exc
        return False

    @property
    def artifact_uri(self) -> str:
        return mlflow.get_artifact_uri()

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})

    def log_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)

    def log_masks(self, image, epoch: int, key: str = "val_masks") -> None:
        """An image per epoch under one key: the UI's step slider shows the masks improving."""
        mlflow.log_image(image, key=key, step=epoch)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib Figure as an image artifact (e.g. `confusion_matrix.png`)."""
        mlflow.log_figure(figure, artifact_file)

    def log_model(self, model, input_example) -> str:
        """The Keras model as an MLflow model loadable with mlflow.pyfunc / mlflow.tensorflow."""
        import keras
        import tensorflow as tf

        info = mlflow.tensorflow.log_model(
            model, name="model", input_example=input_example,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        )
        return info.model_uri

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _raise_terminated(signum, frame):
    raise _Terminated()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

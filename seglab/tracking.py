"""Everything MLflow, behind a few verbs: `Run.start`, `log_epoch`, `log_masks`, `log_figure`,
`log_artifact`, `log_model`, and the end of the `with` block (FINISHED, FAILED or KILLED; never left RUNNING);
`load_model` and `model_run_id` for the tools that use a logged model (predict, evaluate).

The store is whatever `tracking.uri` says (SQLite file, or an http(s) tracking server with its own
artifact store); nothing here assumes a local file.  No module-level state: each job of a sweep
opens its own `Run`.

A tracking server that goes away during a run does not stop the training: the first logging call
that fails is reported as a warning naming what was being logged, the run carries on without the
server (later logging is skipped, checkpoints stay in the job's output directory), and the run's
end status is sent once, best-effort.  While a run is open, MLflow's HTTP retries and timeout are
capped (`HTTP_LIMITS`) so that a dead server costs seconds, not MLflow's default minutes.

Sweeps: a parent run by id (`start_parent_run`, `log_to_run`, `end_run`) and its children
read back as plain values (`child_runs`, `find_parent_run`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from seglab.errors import UserError

log = logging.getLogger(__name__)

REACHABILITY_TIMEOUT_S = 5.0
# MLflow's defaults are 7 retries with exponential backoff and a 120 s timeout per request: minutes
# of waiting per call on a dead server.  Values the user set in the environment win.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# What a store that is down or misbehaving raises (the REST client wraps connection errors in MlflowException).
STORE_ERRORS = (MlflowException, requests.exceptions.RequestException, OSError)
CONNECTION_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError, OSError)


class TrackingError(UserError, RuntimeError):
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
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 behind basic auth, 404 behind a path prefix): it is up
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
        self.failed: str | None = None  # what was being logged when the store stopped answering
        self.skipped: list[str] = []  # what was not logged after that
        self._previous_sigterm = None
        self._previous_env: dict[str, str | None] = {}

    def __enter__(self) -> "Run":
        check_reachable(self.uri)
        self._previous_env = {name: os.environ.get(name) for name in HTTP_LIMITS}
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        try:
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_name=self.run_name, tags=self.tags)
        except BaseException:
            self._restore_env()
            raise
        self.run_id = run.info.run_id
        if _in_main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def _restore_env(self) -> None:
        for name, value in self._previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def _log(self, what: str, call, *args, **kwargs):
        """Call MLflow; on the first store error warn, naming `what`, and skip all later logging."""
        if self.failed is not None:
            self.skipped.append(what)
            return None
        try:
            return call(*args, **kwargs)
        except STORE_ERRORS as err:
            if not store_unavailable(err):
                raise  # the request itself was wrong (e.g. an invalid value): a bug to see, not an outage
            self.failed = what
            log.warning(
                "MLflow logging failed while logging %s to tracking.uri=%s (run %s): %s. Training goes on without "
                "the tracking server; nothing more is logged to it, checkpoints stay in the job's output directory.",
                what, self.uri, self.run_id, _first_line(err),
            )
            return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        if exc_type is None:
            status = RunStatus.FINISHED
        elif issubclass(exc_type, (KeyboardInterrupt, _Terminated)):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
        try:
            if exc is not None and self.failed is None:
                try:
                    mlflow.set_tag("error", f"{exc_type.__name__}: {exc}"[:5000])
                except Exception as tag_err:  # the run must still be ended below
                    log.warning("could not record the error on MLflow run %s: %s", self.run_id, tag_err)
            self._end(RunStatus.to_string(status))
        finally:
            self._restore_env()
        if exc_type is _Terminated:
            raise KeyboardInterrupt("terminated by SIGTERM") from exc
        return False

    def _end(self, status: str) -> None:
        if self.failed is not None:
            log.warning(
                "MLflow run %s is incomplete: logging failed at %s; not logged after that: %s.",
                self.run_id, self.failed, _summary(self.skipped),
            )
        try:  # after a failure: once, best-effort, the server may be back
            mlflow.end_run(status)  # pops the active run even when the server does not answer
        except STORE_ERRORS as err:
            log.warning("could not set MLflow run %s to %s (%s); the server shows it RUNNING.", self.run_id, status, _first_line(err))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._log("params", mlflow.log_params, {k: ("null" if v is None else v) for k, v in params.items()})

    def log_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        self._log(f"metrics of epoch {epoch}", mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=epoch)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._log("metrics", mlflow.log_metrics, {k: float(v) for k, v in metrics.items()})

    def log_masks(self, image, epoch: int, key: str = "val_masks") -> None:
        """An image per epoch under one key: the UI's step slider shows the masks improving."""
        # synchronous: an upload that fails must raise here, to be reported, not die in a background thread
        self._log(f"{key} image of epoch {epoch}", mlflow.log_image, image, key=key, step=epoch, synchronous=True)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._log(f"artifact {path}", mlflow.log_artifact, path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._log(artifact_file, mlflow.log_text, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._log(artifact_file, mlflow.log_dict, dict(data), artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib Figure as an image artifact (e.g. `confusion_matrix.png`)."""
        self._log(artifact_file, mlflow.log_figure, figure, artifact_file)

    def log_confusion_matrix(self, cm, class_names: list[str], title: str) -> None:
        """`confusion_matrix.png` (rows normalised, with counts) and `confusion_matrix.json`, the same
        for a training run and an evaluation run."""
        from seglab import visualize

        self.log_figure(visualize.confusion_matrix_figure(cm, class_names, title), "confusion_matrix.png")
        self.log_dict({"class_names": list(class_names), "rows": "true", "columns": "predicted", "counts": cm.tolist()},
                      "confusion_matrix.json")

    def log_model(self, model, input_example) -> str | None:
        """The Keras model as an MLflow model loadable with mlflow.pyfunc / mlflow.tensorflow;
        its URI, or None when the store did not take it."""
        import keras
        import tensorflow as tf

        info = self._log(
            "the model", mlflow.tensorflow.log_model, model, name="model", input_example=input_example,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        )
        return info.model_uri if info is not None else None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._log(f"tags {', '.join(tags)}", mlflow.set_tags, {k: str(v) for k, v in tags.items()})


def load_model(model_uri: str, tracking_uri: str):
    """A logged seglab model as a Keras model, from any MLflow store (`runs:/<id>/model`,
    `models:/<name>/<version>`, `models:/m-<id>`, a local path)."""
    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.tensorflow.load_model(model_uri)
    except MlflowException as err:
        raise TrackingError(
            f"model_uri={model_uri} cannot be loaded from tracking.uri={tracking_uri}: {_first_line(err)}. "
            "Use the URI printed at the end of training or shown in the run's Artifacts tab, e.g. runs:/<run id>/model."
        ) from err


def model_run_id(model_uri: str, tracking_uri: str) -> str | None:
    """The id of the run that logged the model at `model_uri` (None for a model outside any run)."""
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.models.get_model_info(model_uri).run_id


def run_experiment_and_name(run_id: str, tracking_uri: str) -> tuple[str, str]:
    """(experiment name, run name) of a run."""
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    return client.get_experiment(run.info.experiment_id).name, run.info.run_name


def store_unavailable(err: BaseException) -> bool:
    """The store cannot be reached or failed on its side (connection refused or reset, timeout,
    retries exhausted, HTTP 5xx, a local disk error), as opposed to rejecting a bad request (4xx)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, CONNECTION_ERRORS):
            return True
        if isinstance(seen, MlflowException) and seen.get_http_status_code() >= 500:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _summary(items: list[str], shown: int = 4) -> str:
    if len(items) <= 2 * shown:
        return ", ".join(items) or "nothing"
    return f"{len(items)} calls: {', '.join(items[:shown])}, ..., {', '.join(items[-shown:])}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else type(err).__name__


def _raise_terminated(signum, frame):
    raise _Terminated()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --- sweeps: a parent run per multirun, read back for the summary and `seglab.report` ----------
# The parent is created and ended with MlflowClient, not mlflow.start_run: in the basic launcher the
# jobs run in this same process and each opens its own fluent run, which must not be nested in another.


@dataclass
class ChildRun:
    """One job of a sweep as plain values: what the summary and the report need, nothing of MLflow."""

    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    start_ms: int
    end_ms: int | None
    history: dict[str, list[float]]  # metric -> value per epoch


HISTORY_KEYS = ("val_mean_iou", "val_mean_dice", "val_loss", "val_pixel_accuracy", "train_images_per_second")


def _client(uri: str) -> MlflowClient:
    check_reachable(uri)
    return MlflowClient(uri)


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    return found.experiment_id if found else client.create_experiment(experiment)


def start_parent_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str], texts: Mapping[str, str]) -> str:
    """Create the RUNNING parent run of a sweep, with `texts` ({artifact file: content}) attached."""
    client = _client(uri)
    run = client.create_run(_experiment_id(client, experiment), run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    for artifact_file, text in texts.items():
        client.log_text(run.info.run_id, text, artifact_file)
    return run.info.run_id


def log_to_run(
    uri: str, run_id: str, *, metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None, texts: Mapping[str, str] | None = None, files: Mapping[str, str] | None = None,
) -> None:
    """Add to an existing run by id (e.g. a sweep's parent); `files` maps a local path to its artifact directory."""
    client = _client(uri)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in (metrics or {}).items()],
        params=[Param(k, "null" if v is None else str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )
    for artifact_file, text in (texts or {}).items():
        client.log_text(run_id, text, artifact_file)
    for path, artifact_path in (files or {}).items():
        client.log_artifact(run_id, path, artifact_path or None)


def end_run(uri: str, run_id: str, failed: bool, error: str | None = None) -> None:
    """End a run by id (a sweep's parent, or a job's run its dead process left RUNNING), FAILED with `error` or FINISHED."""
    client = _client(uri)
    if error:
        client.set_tag(run_id, "error", error[:5000])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))


def fail_running_children(uri: str, parent_run_id: str, error: str) -> int:
    """End FAILED every child still RUNNING: its process died (killed, out of memory) without closing it."""
    client = _client(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    where = f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    orphans = client.search_runs(experiment_ids, filter_string=where, max_results=50000)
    for run in orphans:
        client.set_tag(run.info.run_id, "error", error)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return len(orphans)


def record_failed_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None, error: BaseException) -> str:
    """A FAILED run with the error as its `error` tag, for a job that failed before its training run opened
    (e.g. a combination of values the schema rejects), so the sweep still shows and counts it."""
    client = _client(uri)
    all_tags = {**tags, "error": f"{type(error).__name__}: {error}"[:5000]}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(_experiment_id(client, experiment), run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return run.info.run_id


def child_runs(uri: str, parent_run_id: str) -> list[ChildRun]:
    """Every run whose `mlflow.parentRunId` is `parent_run_id`, in any experiment (a sweep may vary the data set)."""
    client = _client(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiment_ids, filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=50000)
    children = []
    for run in runs:
        history = {
            key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
            for key in HISTORY_KEYS
        }
        children.append(ChildRun(
            run.info.run_id, run.info.run_name, run.info.status, dict(run.data.tags), dict(run.data.params),
            run.info.start_time, run.info.end_time, history,
        ))
    return children


def find_parent_run(uri: str, name_or_id: str) -> str:
    """A sweep's parent run id from its id, its MLflow experiment (the latest sweep there) or its run name
    (the latest sweep so named, e.g. an experiment preset's name)."""
    client = _client(uri)
    try:
        run = client.get_run(name_or_id)
    except MlflowException:
        run = None
    if run is not None:
        if run.data.tags.get("seglab.sweep") != "parent":
            raise TrackingError(
                f"run {name_or_id} is not a sweep's parent run (tag seglab.sweep=parent); give the parent's id, "
                "an MLflow experiment name or a sweep's run name."
            )
        return run.info.run_id
    if "'" in name_or_id:
        raise TrackingError(f"{name_or_id!r}: a sweep or experiment name with a quote cannot be searched; use the parent run id.")
    experiment = client.get_experiment_by_name(name_or_id)
    experiment_ids = [experiment.experiment_id] if experiment else [e.experiment_id for e in client.search_experiments()]
    where = "tags.`seglab.sweep` = 'parent'"
    if not experiment:
        where += f" and attributes.run_name = '{name_or_id}'"
    runs = client.search_runs(experiment_ids, filter_string=where, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(
            f"no sweep found for {name_or_id!r} in tracking.uri={uri}: give a parent run id, an MLflow experiment "
            "name (e.g. seglab-shapes) or a sweep's run name, and check the tracking URI."
        )
    return runs[0].info.run_id


def latest_run_metrics(uri: str, experiment: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the newest run of `experiment`, as (step, value) in step order (for comparing runs)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no experiment {experiment!r} in tracking.uri={uri}")
    (run,) = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    return {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        for key in run.data.metrics
    }

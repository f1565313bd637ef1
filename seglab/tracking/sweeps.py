"""How a sweep's runs are tied: a parent run per multirun, created and ended by id with
MlflowClient (`start_parent_run`, `log_to_run`, `end_run`), and its children read back as plain
values (`child_runs`, `find_parent_run`) for the sweep summary and `seglab.report`.

The parent is not an `mlflow.start_run` run: in the basic launcher the jobs run in this same process
and each opens its own fluent run, which must not be nested in another."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from seglab.tracking import tags as keys
from seglab.tracking.experiments import experiment_id
from seglab.tracking.store import ERROR_TAG_CHARS, TrackingError, check_reachable

# The most runs one search returns (MLflow's own upper bound); a sweep has far fewer jobs.
SEARCH_MAX_RESULTS = 50000


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

TEST_SPLIT = "test"
TEST_TABLE = f"per_image_{TEST_SPLIT}.json"  # what seglab.engine.per_image.log names the test split's table
TEST_METRIC = f"{TEST_SPLIT}_mean_iou"


@dataclass
class EvalRun:
    """A job's evaluation on the test split (seglab.evaluate) as plain values."""

    run_id: str
    mean_iou: float | None  # its logged `test_mean_iou`
    table: dict[str, list] | None  # `per_image_test.json`'s columns (NaN where a score is undefined); None: not logged


def _client(uri: str) -> MlflowClient:
    check_reachable(uri)
    return MlflowClient(uri)


def start_parent_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str], texts: Mapping[str, str]) -> str:
    """Create the RUNNING parent run of a sweep, with `texts` ({artifact file: content}) attached."""
    client = _client(uri)
    run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags={k: str(v) for k, v in tags.items()})
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
        client.set_tag(run_id, keys.ERROR, error[:ERROR_TAG_CHARS])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))


def reopen_run(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Set an ended run (a sweep's parent that never reached its end) RUNNING again, with `tags` updated
    and the `error` of its interruption removed."""
    client = _client(uri)
    if keys.ERROR in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, keys.ERROR)
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))


def kill_running_children(uri: str, parent_run_id: str, reason: str) -> int:
    """End KILLED every child still RUNNING, with the reason as `seglab.killed_reason`: its process died
    (killed, out of memory) without closing it.  A re-run of the sweep continues it."""
    client = _client(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    where = f"tags.`{keys.PARENT_RUN}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    orphans = client.search_runs(experiment_ids, filter_string=where, max_results=SEARCH_MAX_RESULTS)
    for run in orphans:
        client.set_tag(run.info.run_id, keys.KILLED_REASON, reason)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return len(orphans)


def record_failed_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None, error: BaseException) -> str:
    """A FAILED run with the error as its `error` tag, for a job that failed before its training run opened
    (e.g. a combination of values the schema rejects), so the sweep still shows and counts it."""
    client = _client(uri)
    all_tags = {**tags, keys.ERROR: f"{type(error).__name__}: {error}"[:ERROR_TAG_CHARS]}
    if parent_run_id:
        all_tags[keys.PARENT_RUN] = parent_run_id
    run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return run.info.run_id


def child_runs(uri: str, parent_run_id: str) -> list[ChildRun]:
    """Every run whose `mlflow.parentRunId` is `parent_run_id`, in any experiment (a sweep may vary the data set)."""
    client = _client(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiment_ids, filter_string=f"tags.`{keys.PARENT_RUN}` = '{parent_run_id}'", max_results=SEARCH_MAX_RESULTS)
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


def latest_test_evaluations(uri: str, training_run_ids: list[str]) -> dict[str, EvalRun]:
    """For each training run that has one, its test scores by training run id: its latest FINISHED evaluation run
    on the test split (tagged `seglab.training_run_id` and `seglab.split=test`), else its own (trainer.score_test)."""
    client = _client(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    found = {}
    for run_id in training_run_ids:
        where = (f"tags.`{keys.TRAINING_RUN}` = '{run_id}' and tags.`{keys.SPLIT}` = '{TEST_SPLIT}' "
                 "and attributes.status = 'FINISHED'")
        runs = client.search_runs(experiment_ids, filter_string=where, order_by=["attributes.start_time DESC"], max_results=1)
        runs = runs or [run for run in [client.get_run(run_id)] if TEST_METRIC in run.data.metrics]
        if runs:
            found[run_id] = EvalRun(runs[0].info.run_id, runs[0].data.metrics.get(TEST_METRIC), _table(client, runs[0]))
    return found


def _table(client: MlflowClient, run) -> dict[str, list] | None:
    """The run's per-image test table as columns.  Read from the file `log_table` wrote (pandas' `split`
    layout: column names, then rows; NaN as null): `MlflowClient.load_table` searches the process's
    default tracking URI, not the client's (MLflow 3.17)."""
    if TEST_TABLE not in {a.path for a in client.list_artifacts(run.info.run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        saved = json.loads(Path(client.download_artifacts(run.info.run_id, TEST_TABLE, tmp)).read_text())
    return {str(name): [row[i] for row in saved["data"]] for i, name in enumerate(saved["columns"])}


def find_parent_run(uri: str, name_or_id: str) -> str:
    """A sweep's parent run id from its id, its MLflow experiment (the latest sweep there) or its run name
    (the latest sweep so named, e.g. an experiment preset's name)."""
    client = _client(uri)
    try:
        run = client.get_run(name_or_id)
    except MlflowException:
        run = None
    if run is not None:
        if run.data.tags.get(keys.SWEEP) != keys.SWEEP_PARENT:
            raise TrackingError(
                f"run {name_or_id} is not a sweep's parent run (tag seglab.sweep=parent); give the parent's id, "
                "an MLflow experiment name or a sweep's run name."
            )
        return run.info.run_id
    if "'" in name_or_id:
        raise TrackingError(f"{name_or_id!r}: a sweep or experiment name with a quote cannot be searched; use the parent run id.")
    experiment = client.get_experiment_by_name(name_or_id)
    experiment_ids = [experiment.experiment_id] if experiment else [e.experiment_id for e in client.search_experiments()]
    where = f"tags.`{keys.SWEEP}` = '{keys.SWEEP_PARENT}'"
    if not experiment:
        where += f" and attributes.run_name = '{name_or_id}'"
    runs = client.search_runs(experiment_ids, filter_string=where, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(
            f"no sweep found for {name_or_id!r} in tracking.uri={uri}: give a parent run id, an MLflow experiment "
            "name (e.g. seglab-shapes) or a sweep's run name, and check the tracking URI."
        )
    return runs[0].info.run_id


def latest_run_metrics(uri: str, experiment: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str]]:
    """Every metric of the newest run of `experiment`, as (step, value) in step order, and its params
    (for comparing two runs, `seglab.check_determinism`)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no experiment {experiment!r} in tracking.uri={uri}")
    (run,) = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    metrics = {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        for key in run.data.metrics
    }
    return metrics, dict(run.data.params)


def create_experiment(uri: str, experiment: str, artifact_location: str) -> str:
    """The experiment, its artifacts in `artifact_location` (not the store's default `./mlruns`) when it is new."""
    return experiment_id(_client(uri), experiment, artifact_location)

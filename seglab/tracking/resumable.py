"""What a re-run needs from the store to continue a run: earlier runs of the same experiment found
by tags, ended KILLED with a reason, their checkpoints downloaded, and what they already logged
(so a redone epoch is not logged twice).  Plain values out, nothing of MLflow; any store (SQLite,
a tracking server with S3 artifacts)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from seglab.tracking import tags
from seglab.tracking.store import ERROR_TAG_CHARS, TrackingError, check_reachable, first_line, shown, sqlite_absent

_IMAGE_STEP = re.compile(r"^(?P<key>.+?)[%+]step[%+](?P<step>\d+)[%+]")  # MLflow 3 names: key+step+N+..., older: %


@dataclass
class RunRecord:
    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    tags: dict[str, str]
    params: dict[str, str]
    start_ms: int
    end_ms: int | None = None
    name: str | None = None
    deleted: bool = False  # deleted in the MLflow UI (or `mlflow runs delete`): restorable, not writable


def _client(uri: str) -> MlflowClient:
    check_reachable(uri)
    return MlflowClient(uri)


def _quoted(value: str) -> str:
    if "'" in value:
        raise ValueError(f"cannot search for a tag value with a quote: {value!r}")
    return f"'{value}'"


def find_runs(uri: str, experiment: str, tags: Mapping[str, str]) -> list[RunRecord]:
    """Runs of `experiment` carrying all of `tags`, newest first ([] when the experiment, or the store, does not
    exist yet)."""
    if sqlite_absent(uri):
        return []
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    where = " and ".join(f"tags.`{k}` = {_quoted(v)}" for k, v in tags.items())
    runs = client.search_runs([found.experiment_id], filter_string=where, order_by=["attributes.start_time DESC"], max_results=1000)
    return [_record(r) for r in runs]


def running_runs(uri: str, experiment: str) -> list[RunRecord]:
    """The RUNNING runs of `experiment` that say who owns them (the `seglab.host` tag), newest first."""
    if sqlite_absent(uri):
        return []
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    return [_record(r) for r in runs if tags.HOST in r.data.tags]


def get_run(uri: str, run_id: str) -> RunRecord:
    return _record(_client(uri).get_run(run_id))


def experiment_of(uri: str, run_id: str) -> str:
    client = _client(uri)
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def _record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.status, dict(run.data.tags), dict(run.data.params), run.info.start_time,
                     run.info.end_time, run.info.run_name, run.info.lifecycle_stage == "deleted")


def put_back(uri: str, before: RunRecord) -> None:
    """Return a reopened run's status, end time, name and tags to what they were (`before`): a resume
    refused after the run reopened leaves no trace on it.  Params cannot be deleted in MLflow: the
    caller logs none before it knows the resume goes ahead."""
    client = _client(uri)
    now = client.get_run(before.run_id).data.tags
    for key in now.keys() - before.tags.keys():
        client.delete_tag(before.run_id, key)
    for key, value in before.tags.items():
        if now.get(key) != value:
            client.set_tag(before.run_id, key, value)
    client.set_terminated(before.run_id, before.status, end_time=before.end_ms)
    if before.name is not None:
        client.update_run(before.run_id, name=before.name)


def end_killed(uri: str, run_id: str, reason: str) -> None:
    """End a run whose process is gone KILLED, naming why in the `seglab.killed_reason` tag."""
    client = _client(uri)
    client.set_tag(run_id, tags.KILLED_REASON, reason[:ERROR_TAG_CHARS])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))


def claim(uri: str, run_id: str, key: str, value: str) -> str | None:
    """Log the write-once param `key` = `value` on the run (engine.claim): None when this call logged it (or had
    already: the same value again is a no-op), else the other value a process logged first."""
    client = _client(uri)
    try:
        client.log_param(run_id, key, value)
    except MlflowException as err:
        if err.error_code != "INVALID_PARAMETER_VALUE":
            raise
        first = client.get_run(run_id).data.params.get(key)
        if first is None or first == value:
            raise  # refused for another reason (a deleted run)
        return first
    return None


class CheckpointUnavailable(TrackingError):
    """The store did not answer while a resume looked for or fetched the run's checkpoint: nothing was trained, so
    the run is put back as it was (seglab.engine.owner), never resumed from an older copy."""

    resume_refused = True


def _unavailable(uri: str, run_id: str, doing: str, err: BaseException) -> CheckpointUnavailable:
    return CheckpointUnavailable(f"tracking.uri={shown(uri)}: could not {doing} of run {run_id} ({first_line(err)}); "
                                 "run the command again once the store and its artifact store answer")


def holds_artifact(uri: str, run_id: str, directory: str, name: str) -> bool:
    """Whether the run's artifacts hold the file `directory/name`: from a listing (nothing downloaded) that answered;
    a store or artifact store that does not answer raises CheckpointUnavailable, never "not there"."""
    try:
        listing = _client(uri).list_artifacts(run_id, directory)
    except Exception as err:  # noqa: BLE001  MLflow's, requests' or boto's own errors alike: the store did not answer
        raise _unavailable(uri, run_id, f"list the checkpoint '{directory}'", err) from err
    return any(item.path.rsplit("/", 1)[-1] == name for item in listing)


def download_checkpoint(uri: str, run_id: str, artifact_dir: str, destination: Path) -> Path:
    """The uploaded checkpoint directory `artifact_dir` of the run, into `destination`; its local path.  MLflow
    words every failure alike ("Failed to download artifacts"), so whether it is there is holds_artifact's to say."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        return Path(_client(uri).download_artifacts(run_id, artifact_dir, str(destination)))
    except Exception as err:  # noqa: BLE001  as in holds_artifact
        raise _unavailable(uri, run_id, f"download the checkpoint '{artifact_dir}'", err) from err


def logged_steps(uri: str, run_id: str) -> dict[str, int]:
    """The last step logged for each metric of the run, and for each image key (as `image:<key>`)."""
    client = _client(uri)
    run = client.get_run(run_id)
    steps = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run_id, key)
        if history:
            steps[key] = max(m.step for m in history)
    for artifact in client.list_artifacts(run_id, "images"):
        match = _IMAGE_STEP.match(Path(artifact.path).name)
        if match:
            name = f"image:{match['key']}"
            steps[name] = max(steps.get(name, -1), int(match["step"]))
    return steps

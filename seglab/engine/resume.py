"""Resume after any kill: which run a command continues (`plan`), and the checkpoint it continues
from (`restore`).  See docs/resume.md.

`trainer.resume`:
- `auto` (default): continue the newest run of the same experiment (same `seglab.run_key` tag, same
  sweep parent or none) that is KILLED, or RUNNING while its owner is dead; else start a new run.
  FINISHED and FAILED (an error) runs are never continued by `auto`.
- `never`: always a new run.
- `<run id>`: continue that run, whatever its status (a FINISHED one to train more epochs), unless
  its owner is alive.

Whatever the mode, a RUNNING run of the same key whose owner is dead is not left RUNNING: it is
continued, or ended KILLED with the reason in the `seglab.killed_reason` tag.

An owner is dead when (`owner_alive`): this process is its scheduler job requeued (same SLURM or
submitit job id); or it ran on this host and its pid is gone (or now belongs to a process started
at another time); or it ran on another host and its heartbeat (every epoch) is older than
`trainer.heartbeat_timeout_min`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from seglab.engine import run_identity
from seglab.errors import UserError
from seglab.tracking import resumable
from seglab.tracking.run import HEARTBEAT_TAG

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STATE_FILE, BEST_FILE = "last.state.npz", "best.keras"


class ResumeError(UserError, ValueError):
    """`trainer.resume` names a run that cannot be continued; the message says why and what to do."""


@dataclass
class Plan:
    run_id: str | None  # the run to continue; None: a new run
    previous_tags: dict[str, str] = field(default_factory=dict)  # its tags before this command changed them
    status: str | None = None  # its status when found


def owner_alive(tags: dict[str, str], timeout_s: float, now: float | None = None) -> bool:
    job = run_identity.scheduler_job_id()
    if job and tags.get("seglab.job_id") == job:
        return False  # the scheduler requeued that job as this process: its first run is over
    if tags.get("seglab.host") == socket.gethostname():
        pid = int(tags.get("seglab.pid", "-1"))
        if pid == os.getpid():
            return False  # an earlier job of this same process (a sweep's basic launcher) that did not end it
        if pid <= 0 or not _pid_alive(pid):
            return False
        started = tags.get("seglab.pid_start")
        return started is None or run_identity.process_start(pid) in (None, started)
    heartbeat = float(tags.get(HEARTBEAT_TAG, "0"))
    return (now or time.time()) - heartbeat < timeout_s


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _describe_owner(tags: dict[str, str]) -> str:
    return f"pid {tags.get('seglab.pid', '?')} on host {tags.get('seglab.host', '?')}"


def plan(mode: str, uri: str, experiment: str, key: str, parent_run_id: str | None, timeout_s: float) -> Plan:
    """Which run this command continues (see the module docstring); ends dead RUNNING runs it does not continue."""
    if mode not in ("auto", "never"):
        return _explicit(mode, uri, experiment, timeout_s)
    same = [r for r in resumable.find_runs(uri, experiment, {run_identity.KEY_TAG: key})
            if r.tags.get(PARENT_TAG) == (parent_run_id or None)]
    dead_running = [r for r in same if r.status == "RUNNING" and not owner_alive(r.tags, timeout_s)]
    chosen = None
    if mode == "auto":
        chosen = next((r for r in same if r.status == "KILLED" or r in dead_running), None)
    for run in dead_running:
        if run is not chosen:
            why = f"continued by run {chosen.run_id} instead" if chosen else "a new run was started with trainer.resume=never"
            resumable.end_killed(uri, run.run_id, f"its process ({_describe_owner(run.tags)}) is gone; {why}")
            log.warning("run %s was RUNNING with its process gone: ended KILLED", run.run_id)
    if chosen is None:
        return Plan(None)
    log.info("trainer.resume=auto: continuing %s run %s (same run key %s)", chosen.status, chosen.run_id, key)
    return Plan(chosen.run_id, chosen.tags, chosen.status)


def _explicit(run_id: str, uri: str, experiment: str, timeout_s: float) -> Plan:
    try:
        run = resumable.get_run(uri, run_id)
    except Exception as err:  # noqa: BLE001  MLflow's not-found error; the message below names the fix
        raise ResumeError(f"trainer.resume={run_id}: no such run in tracking.uri={uri} ({err}); use a run id from "
                          "the MLflow UI, or trainer.resume=auto") from err
    run_experiment = resumable.experiment_of(uri, run_id)
    if run_experiment != experiment:
        raise ResumeError(f"trainer.resume={run_id} is a run of experiment {run_experiment!r}, not {experiment!r}: "
                          f"add tracking.experiment={run_experiment!r}")
    if run.status == "RUNNING" and owner_alive(run.tags, timeout_s):
        raise ResumeError(f"trainer.resume={run_id}: that run is still running ({_describe_owner(run.tags)}); "
                          "stop it first, or wait trainer.heartbeat_timeout_min if that host is gone")
    return Plan(run_id, run.tags, run.status)


def restore_files(uri: str, run_id: str, previous_tags: dict[str, str], checkpoint_dir: Path, current_dir: Path) -> Path | None:
    """Put the newest complete checkpoint of the run into `current_dir` (the state file and the best
    model) and return the state file's path; None when the run has none.  Looked for in the killed
    job's own directory on this machine (`hydra.output_dir` tag), and in the run's artifacts (the
    upload named by the `seglab.checkpoint` tag: another machine, e.g. after a SLURM requeue);
    the one with more epochs wins."""
    from seglab.engine import checkpoint

    local = _local_checkpoint(previous_tags, checkpoint_dir, current_dir)
    local_epoch = checkpoint.saved_epoch(local / STATE_FILE) if local else -1
    uploaded = previous_tags.get(resumable.CHECKPOINT_TAG)
    uploaded_epoch = int(previous_tags.get(resumable.CHECKPOINT_EPOCH_TAG, -1)) if uploaded else -1
    if local is None and uploaded is None:
        return None
    if uploaded_epoch > local_epoch:
        staging = current_dir.parent / f".{current_dir.name}.download"
        shutil.rmtree(staging, ignore_errors=True)
        source = resumable.download_checkpoint(uri, run_id, uploaded, staging)
        log.info("resuming from the uploaded checkpoint %s (epoch %d)", uploaded, uploaded_epoch)
    else:
        source, staging = local, None
        log.info("resuming from the local checkpoint %s (epoch %d)", local, local_epoch)
    current_dir.mkdir(parents=True, exist_ok=True)
    if source.resolve() != current_dir.resolve():
        for name in (BEST_FILE, STATE_FILE):  # the state last: it is what says a checkpoint is complete
            if (source / name).exists():
                _copy_atomic(source / name, current_dir / name)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    return current_dir / STATE_FILE


def _local_checkpoint(previous_tags: dict[str, str], checkpoint_dir: Path, current_dir: Path) -> Path | None:
    candidates = [current_dir]
    if previous_tags.get("hydra.output_dir"):
        candidates.append(Path(previous_tags["hydra.output_dir"]) / checkpoint_dir)
    found = [d for d in candidates if (d / STATE_FILE).exists()]
    if not found:
        return None
    from seglab.engine import checkpoint

    return max(found, key=lambda d: checkpoint.saved_epoch(d / STATE_FILE))


def _copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.copy")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def initial_epoch(found: Plan, uri: str, model, checkpointer, checkpoint_dir: str) -> int:
    """Load the newest complete checkpoint of the run being continued into the compiled `model` and
    the `checkpointer`; the epochs it completed (0 for a new run, or one killed before its first)."""
    if found.run_id is None:
        return 0
    from seglab.engine import checkpoint

    path = restore_files(uri, found.run_id, found.previous_tags, Path(checkpoint_dir), checkpointer.directory)
    if path is None:
        log.info("run %s has no checkpoint yet: it starts again from epoch 1", found.run_id)
        return 0
    state = checkpoint.load_state(path, model)
    checkpointer.restore(state)
    log.info("continuing run %s after epoch %d (best %s %.4f)", found.run_id, state.epoch, checkpointer.monitor, state.best)
    return state.epoch


def finished_result(uri: str, experiment: str, key: str, parent_run_id: str, metric: str) -> tuple[str, float] | None:
    """A FINISHED run of the same key under the sweep's parent, and the objective it returned (its
    `best_<metric>` tag): a re-run sweep returns that to the sweeper instead of training again."""
    for run in resumable.find_runs(uri, experiment, {run_identity.KEY_TAG: key, PARENT_TAG: parent_run_id}):
        if run.status == "FINISHED" and f"best_{metric}" in run.tags:
            return run.run_id, float(run.tags[f"best_{metric}"])
    return None


def resumable_parent(uri: str, experiment: str, sweep_key: str, timeout_s: float) -> str | None:
    """The newest parent run of a sweep with this key that did not reach its end and whose owner is gone."""
    parents = resumable.find_runs(uri, experiment, {"seglab.sweep": "parent", run_identity.SWEEP_KEY_TAG: sweep_key})
    if not parents or run_identity.SWEEP_ENDED_TAG in parents[0].tags:
        return None
    newest = parents[0]
    if newest.status == "RUNNING" and owner_alive(newest.tags, timeout_s):
        return None  # the same sweep is running now, elsewhere: this one is a new sweep
    return newest.run_id

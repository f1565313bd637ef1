"""Who may write to a run: one process at a time, decided by the store (docs/resume.md, "Who may write
to a run").  Read by `seglab.engine.lifecycle` (which run a command continues) and `seglab.engine.train`.

**The owner.**  Every run carries who opened it (`owner_tags`: host, pid, the process's start time,
the scheduler's job id, a heartbeat every epoch).  The process that creates a run owns it: generation 0.

**The claim.**  A command that takes an existing run (a resume, a requeued job, a sweep's job that
continues its run) claims it before it writes anything: it reads the run's latest generation G and
logs the param `seglab.claim.<G+1>` = `<host>:<pid>:<process start>:<unix time>:<uuid4>`.  MLflow
params are write-once in every store (SQLite, PostgreSQL, a tracking server: the primary key is
(key, run), another value is refused with INVALID_PARAMETER_VALUE in one transaction, the same value
is a no-op, so a retried request is harmless), so of two processes claiming one generation exactly
one succeeds and the other refuses in one line naming the winner (`RunTaken`).  A param, not a tag:
a tag can be overwritten by anyone, a param cannot.

**Held.**  The latest claimant (the creator when there is no claim) holds the run while it is alive
and the run is RUNNING or was claimed after it last ended (a claimant that has not reopened it yet).
A held run is refused before claiming.  Alive (`owner_alive`): the same scheduler job requeued as
this process is dead; on this host, its pid exists with the same start time; on another host, its
heartbeat (or claim) is newer than `trainer.heartbeat_timeout_min`.
"""

# Lazy imports: MLflow loads only when the store is read: owner_tags is read by the sweep callback before it.

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from seglab.errors import UserError
from seglab.tracking import tags as keys

log = logging.getLogger(__name__)


# conf/trainer/default.yaml's trainer.heartbeat_timeout_min, for a command without a training config (seglab.report).
HEARTBEAT_TIMEOUT_MIN = 60


class RunTaken(UserError, RuntimeError):
    """Another live process holds the run, or claimed it first; the message names the run and that process."""


# --- the owner of a run, and whether it is alive ---------------------------------------------


def owner_tags() -> dict[str, str]:
    """Who is running a run now, so a later command can tell a live owner from a dead one
    (`owner_alive`): host, pid (and the process's start time, against pid reuse), the
    scheduler's job id (a requeued job keeps it), and a heartbeat (Unix seconds)."""
    found = {keys.HOST: socket.gethostname(), keys.PID: str(os.getpid()), keys.HEARTBEAT: str(int(time.time()))}
    started = process_start(os.getpid())
    if started:
        found[keys.PID_START] = started
    job = scheduler_job_id()
    if job:
        found[keys.JOB_ID] = job
    return found


def scheduler_job_id() -> str | None:
    """SLURM's job id (kept when SLURM requeues the job), or submitit's local job id."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_alive(tags: dict[str, str], timeout_s: float, now: float | None = None) -> bool:
    job = scheduler_job_id()
    if job and tags.get(keys.JOB_ID) == job:
        return False  # the scheduler requeued that job as this process: its first run is over
    if tags.get(keys.HOST) == socket.gethostname():
        pid = int(tags.get(keys.PID, "-1"))
        if pid == os.getpid():
            return False  # an earlier job of this same process (a sweep's basic launcher) that did not end it
        if pid <= 0 or not _pid_alive(pid):
            return False
        started = tags.get(keys.PID_START)
        return started is None or process_start(pid) in (None, started)
    heartbeat = float(tags.get(keys.HEARTBEAT, "0"))
    return (now or time.time()) - heartbeat < timeout_s


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def describe(tags: dict[str, str]) -> str:
    return f"pid {tags.get(keys.PID, '?')} on host {tags.get(keys.HOST, '?')}"


# --- the claim ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    generation: int
    host: str
    pid: str
    pid_start: str  # "-" where unknown
    at: float  # Unix seconds when claimed
    token: str  # uuid4: two claims are never the same value

    @property
    def value(self) -> str:
        return f"{self.host}:{self.pid}:{self.pid_start}:{self.at:.3f}:{self.token}"

    @classmethod
    def parse(cls, generation: int, value: str) -> Claim:
        host, pid, pid_start, at, token = value.rsplit(":", 4)
        return cls(generation, host, pid, pid_start, float(at), token)

    @classmethod
    def mine(cls, generation: int) -> Claim:
        return cls(generation, socket.gethostname(), str(os.getpid()), process_start(os.getpid()) or "-", round(time.time(), 3),
                   uuid.uuid4().hex)


def latest(params: dict[str, str]) -> Claim | None:
    """The run's newest claim (its params `seglab.claim.<N>`), None when none was made."""
    found = {int(k[len(keys.CLAIM_PREFIX):]): v for k, v in params.items()
             if k.startswith(keys.CLAIM_PREFIX) and k[len(keys.CLAIM_PREFIX):].isdigit()}
    if not found:
        return None
    generation = max(found)
    return Claim.parse(generation, found[generation])


def holder(run) -> dict[str, str]:
    """Who holds `run` (a tracking.resumable.RunRecord), as owner tags: the latest claimant, its last sign of life
    the newer of its claim and the run's heartbeat; the run's own owner tags when it was never claimed."""
    claim = latest(run.params)
    if claim is None:
        return run.tags
    found = {keys.HOST: claim.host, keys.PID: claim.pid, keys.HEARTBEAT: str(max(claim.at, float(run.tags.get(keys.HEARTBEAT, 0))))}
    if claim.pid_start != "-":
        found[keys.PID_START] = claim.pid_start
    if (run.tags.get(keys.HOST), run.tags.get(keys.PID)) == (claim.host, claim.pid) and keys.JOB_ID in run.tags:
        found[keys.JOB_ID] = run.tags[keys.JOB_ID]  # the claimant reopened the run: its job id is in the tags
    return found


def held(run, timeout_s: float) -> bool:
    """Someone else holds `run`: its holder is alive and the run is RUNNING or was claimed after it last ended."""
    claim = latest(run.params)
    in_use = run.status == "RUNNING" or (claim is not None and (run.end_ms is None or claim.at * 1000 > run.end_ms))
    return in_use and owner_alive(holder(run), timeout_s)


def take(uri: str, run, timeout_s: float, why: str) -> Claim:
    """Claim `run` (a RunRecord) for this process, or raise RunTaken naming its live holder or the process that
    claimed it first.  `why`: what the command asked, for the message (e.g. `trainer.resume=<id>`)."""
    from seglab.tracking import resumable  # MLflow loads when a command asks the store, not on import

    if held(run, timeout_s):
        raise RunTaken(f"{why}: run {run.run_id} is {run.status} and held by {describe(holder(run))}, which is alive; "
                       "stop that process first, or wait trainer.heartbeat_timeout_min if that host is gone")
    previous = latest(run.params)
    mine = Claim.mine(previous.generation + 1 if previous else 1)
    other = resumable.claim(uri, run.run_id, keys.claim(mine.generation), mine.value)
    if other is not None:
        first = Claim.parse(mine.generation, other)
        raise RunTaken(f"{why}: run {run.run_id} was just claimed by pid {first.pid} on host {first.host} "
                       f"(claim {mine.generation}); it writes to that run now, this command does not")
    log.info("claimed run %s (claim %d)", run.run_id, mine.generation)
    return mine


def end_dead(uri: str, experiment: str, timeout_s: float, by: str) -> list[str]:
    """End KILLED the RUNNING runs of `experiment` whose holder is gone (a `kill -9`, a lost node), naming it and
    `by`, the command that found them, in the `seglab.killed_reason` tag; their ids.  Every command that opens a
    run in an experiment calls it first, so no run of a dead process stays RUNNING past the next command."""
    from seglab.tracking import resumable  # MLflow loads when a command asks the store, not on import

    return [run.run_id for run in resumable.running_runs(uri, experiment) if end_if_dead(uri, run, timeout_s, by)]


def end_if_dead(uri: str, run, timeout_s: float, by: str) -> bool:
    """End `run` (a RunRecord) KILLED, naming why, when it is RUNNING, says who owns it and its holder is gone."""
    from seglab.tracking import resumable

    if run.status != "RUNNING" or keys.HOST not in run.tags or held(run, timeout_s):
        return False
    resumable.end_killed(uri, run.run_id, f"its process ({describe(holder(run))}) is gone; found by {by}")
    log.warning("run %s was RUNNING with its process gone: ended KILLED", run.run_id)
    return True

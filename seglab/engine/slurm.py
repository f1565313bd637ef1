"""What seglab changes in submitit's SLURM launcher, two things:

- its `sacct` polls on a cluster without SLURM's accounting database (slurmdbd), where every poll fails
  and submitit logs "Bypassing sacct error" three times a poll, with sacct's own "Slurm accounting
  storage is disabled".  Those polls change nothing (a failed poll leaves the job states unknown, and
  submitit then reads each job's result from its folder), so without accounting seglab skips them and
  says so once;
- the ids of the jobs it submits are kept (`keep_job_ids`), so a stopped sweep cancels them
  (`cancel_jobs`, called by seglab.engine.sweep): Hydra's launcher holds its submitit jobs in a local
  variable, and without this they would train on, queued or running, after the sweep ended.  `scancel`
  sends each job SIGTERM, so its run ends KILLED (seglab.engine.owner); it does not requeue it (submitit
  requeues on the pre-emption signal, USR2, only)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

from submitit.slurm import slurm

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S = 60  # one call of squeue or scancel: slurmctld answers in well under a second when it is up
POLL_S = 0.5
_submitted: list[str] = []  # this process's SLURM job ids ("123_0": an array's task), in the order submitted


def accounting_error() -> str | None:
    """sacct's answer when SLURM keeps no accounting (its first line), None when sacct works."""
    sacct = shutil.which("sacct")
    if sacct is None:
        return None  # no SLURM here: the launcher says so itself (seglab.errors)
    probe = subprocess.run([sacct, "--noheader", "--allocations", "--jobs", "1"], capture_output=True, text=True, timeout=60)
    if probe.returncode == 0:
        return None
    return (probe.stderr.strip() or f"exit code {probe.returncode}").splitlines()[0]


def skip_sacct_without_accounting() -> None:
    error = accounting_error()
    if error is None:
        return
    slurm.SlurmInfoWatcher._make_command = lambda self: None  # no poll; the job folders say when a job is done
    log.info("SLURM keeps no job accounting (sacct: %s): the sweep reads each job's result from its folder", error)


def keep_job_ids() -> None:
    """Keep the id of every job submitit's SLURM executor submits from now on (in `_submitted`)."""
    submit = slurm.SlurmExecutor._internal_process_submissions
    if getattr(submit, "keeps_job_ids", False):
        return

    def submit_and_keep(executor, delayed_submissions):
        with _signals_held():
            jobs = submit(executor, delayed_submissions)
            _submitted.extend(job.job_id for job in jobs)
        return jobs

    submit_and_keep.keeps_job_ids = True
    slurm.SlurmExecutor._internal_process_submissions = submit_and_keep


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and Ctrl-C wait until the submission ends: cut short inside it, sbatch could queue jobs
    whose ids nobody read, which nobody would cancel.  The signal then comes as it would have."""
    came: list[int] = []
    held = [s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) not in (signal.SIG_IGN, None)]
    previous = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in came:
            signal.raise_signal(sig)


def cancel_jobs(grace_s: float) -> None:
    """`scancel` this process's jobs that SLURM still lists, then wait up to `grace_s` for SLURM to list none
    (each ends its run KILLED on the SIGTERM; SLURM sends SIGKILL after its KillWait)."""
    left = queued(_submitted)
    if not left:
        return
    # debug: this runs at exit, after the sweep's one line (seglab.errors); a job that did not go is a warning
    log.debug("cancelling the sweep's SLURM jobs %s", " ".join(left))
    try:
        done = subprocess.run(["scancel", *left], check=False, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:  # no scancel here, or slurmctld not answering: at exit, a warning
        log.warning("could not cancel the sweep's SLURM jobs %s (%s): scancel them yourself", " ".join(left), err)
        return
    if done.returncode != 0:  # a job that ended meanwhile: "already completing or completed"
        log.debug("scancel: %s", done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit code {done.returncode}")
    deadline = time.monotonic() + grace_s
    while (left := queued(left)) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    if left:
        log.warning("squeue still lists the sweep's cancelled SLURM jobs %s (or cannot say) after %.0f s; SLURM ends them itself",
                    " ".join(left), grace_s)


def queued(job_ids: list[str]) -> list[str]:
    """Those of `job_ids` that squeue lists (pending, running or completing), in their order; all of them
    when squeue cannot say (slurmctld not answering): cancelling a job that ended does no harm."""
    if not job_ids:
        return []
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--format=%i", f"--jobs={','.join(job_ids)}"],
                              check=False, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):  # no squeue here, or slurmctld not answering: it cannot say
        return list(job_ids)
    # "Invalid job id": SLURM forgot them all (ended longer than its MinJobAge ago), none is left
    if done.returncode != 0 and "Invalid job id" not in done.stderr:
        return list(job_ids)
    listed = set(done.stdout.split())
    return [job_id for job_id in job_ids if job_id in listed]

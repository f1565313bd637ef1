"""What seglab changes in submitit's SLURM launcher: nothing, except its `sacct` polls on a cluster
without SLURM's accounting database (slurmdbd), where every poll fails and submitit logs
"Bypassing sacct error" three times a poll, with sacct's own "Slurm accounting storage is disabled".
Those polls change nothing (a failed poll leaves the job states unknown, and submitit then reads each
job's result from its folder), so without accounting seglab skips them and says so once."""

from __future__ import annotations

import logging
import shutil
import subprocess

from submitit.slurm import slurm

log = logging.getLogger(__name__)


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

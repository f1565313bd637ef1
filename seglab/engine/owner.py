"""The owner of a run's life: the one place that decides how a command's run begins and ends.  Every
command that opens a run (training, `seglab.evaluate`, `seglab.bench`) opens it as

    with RunOwner(tracking.Run(...), continues=record, timeout_s=..., why=...) as mlrun:
        mlrun.log_...                        # the logging verbs are the Run's (seglab.tracking.run)

and the owner does the rest (docs/resume.md):

- **the claim**: a run it continues (`continues`, what seglab.engine.lifecycle.plan chose) is claimed
  first (seglab.engine.claim.take: a live holder, or a process that claimed it first, is refused in one
  line), then reopened with what a resume needs (the steps the run already has, its checkpoint upload,
  the error of the attempt it continues);
- **the claim, again, every epoch**: before an epoch's metrics are written the holder reads the run's
  newest claim (one read); taken over by another process (which found it dead: on another host, a
  heartbeat older than trainer.heartbeat_timeout_min), it stops with one line and writes nothing more
  to the run, not even its end (`ClaimLost`);
- **the end, on every exit**: FINISHED; KILLED for Ctrl-C and SIGTERM (one line, exit 130 or 143: how to
  go on), for a SystemExit (submitit requeueing a pre-empted job) and for an interruption from outside
  (`ends_killed`: a lost worker of a cluster); FAILED with the error as the `error` tag otherwise.  A resume
  refused after the run reopened (`resume_refused`: a checkpoint of another shape) puts the run back as it
  was.  A finished continued run moves the killed attempt's error to `seglab.resume.previous_error`;
- **signals**: Ctrl-C and SIGTERM become exceptions (seglab.util.signals), never in the middle of a write;
- **a server that went away**: the training went on without it (the Run skipped its logging); the end
  names what was not logged and sends the status once, best-effort;
- **a SQLite store whose own file refused a write** (disk full, read-only, locked past the busy timeout): not a
  server gone away; the command stops, the run ends FAILED if the store still takes that, and one line (exit 2)
  names the file, the fix and how to resume (`_store_lost`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Self

from seglab.engine import claim
from seglab.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Interrupted
from seglab.tracking import resumable
from seglab.tracking import tags as keys
from seglab.tracking.run import Run
from seglab.tracking.store import STORE_ERRORS, StoreWriteFailed, TrackingError, first_line
from seglab.util import signals

log = logging.getLogger(__name__)

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


class ClaimLost(claim.RunTaken):
    """Another process claimed the run while this one wrote to it: this one stops and leaves the run to it."""

    leaves_run = True  # RunOwner: nothing more is written to the run, not its status either


class RunOwner:
    """A command's run (a `tracking.Run`, not yet open) from its claim to its end status; see the module docstring.
    Used as the Run it owns: the verbs it does not define itself are the Run's."""

    def __init__(self, run: Run, continues: resumable.RunRecord | None = None, timeout_s: float = 0.0, why: str = ""):
        self.run = run
        self.continues = continues  # the existing run to claim and reopen; None: a new run, which its creator holds
        self.timeout_s = timeout_s  # trainer.heartbeat_timeout_min, in seconds: when a holder on another host is dead
        self.why = why  # what the command asked (`trainer.resume=...`), for the refusal's line
        self.claim: claim.Claim | None = None
        self._before: resumable.RunRecord | None = None  # the continued run as it was before it reopened
        self._previous_error: str | None = None  # the `error` tag of the attempt being continued
        self._restore_signals = lambda: None

    def __getattr__(self, name: str):
        if name == "run":  # not set yet (a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.run, name)

    def __enter__(self) -> Self:
        if self.continues is not None:
            self.claim = claim.take(self.run.uri, self.continues, self.timeout_s, self.why)  # before anything is written
            self.run.resume_run_id = self.continues.run_id
            self._before = resumable.get_run(self.run.uri, self.continues.run_id)
        self.run.open()
        if self._before is not None:
            try:
                self._reopened(self._before)
            except BaseException:
                self.run.end(FAILED)
                raise
        self._restore_signals = signals.catch()
        return self

    def _reopened(self, before: resumable.RunRecord) -> None:
        """What the continued run already has: a metric or image is never logged twice at a step."""
        run = self.run
        run.logged_steps = resumable.logged_steps(run.uri, run.run_id)
        run.epochs_done = max(run.logged_steps.values(), default=-1) + 1
        run.checkpoint_dir = before.tags.get(keys.CHECKPOINT)
        self._previous_error = before.tags.get(keys.ERROR)

    def log_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        """An epoch's metrics, once the run is still this process's (`still_mine`): the first write of an epoch's end."""
        self.still_mine()
        self.run.log_epoch(metrics, epoch)

    def still_mine(self) -> None:
        """Raise ClaimLost when another process claimed the run since this one took it (one read of its params).
        Without a store (it stopped answering) there is nothing to write beside, and nothing to check."""
        if self.run.failed is not None:
            return
        try:
            params = resumable.get_run(self.run.uri, self.run.run_id).params
        except (TrackingError, *STORE_ERRORS) as err:
            log.warning("could not read the claims of MLflow run %s (%s); checked again after the next epoch",
                        self.run.run_id, first_line(err))
            return
        newest = claim.latest(params)
        if newest is None or (self.claim is not None and newest.value == self.claim.value):
            return
        mine = f"claim {self.claim.generation}" if self.claim else "it created the run"
        raise ClaimLost(f"run {self.run.run_id} was claimed by pid {newest.pid} on host {newest.host} (claim {newest.generation}) "
                        f"while this process ({mine}) trained it, taken for dead (no heartbeat for "
                        "trainer.heartbeat_timeout_min?); this process stops and writes nothing more to it")

    def __exit__(self, exc_type, exc, tb) -> bool:
        sigterm = signals.terminated()  # read before the handlers go: restoring them forgets it
        self._restore_signals()
        if exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt, signals.Terminated)) and sigterm:
            # SIGTERM came and a library's clean-up turned its exception into another (autograph's context asserts its
            # stack on the way out: AssertionError): the run was stopped, not failed.
            exc_type, exc = signals.Terminated, signals.Terminated()
        if getattr(exc, "leaves_run", False):
            self.run.let_go()
            return False
        if self.run.store_lost is not None:
            self._store_lost(FAILED if self.run.end(FAILED, str(self.run.store_lost)) else None)
        if self._before is not None and getattr(exc, "resume_refused", False):
            self._put_back()
            return False
        stopped = self._stopped(exc_type)
        if exc_type is None:
            status = FINISHED
        elif stopped or issubclass(exc_type, SystemExit) or getattr(exc, "ends_killed", False):
            status = KILLED
        else:
            status = FAILED
        ended = self._end(status, None if exc is None else stopped or f"{exc_type.__name__}: {exc}")
        if self.run.store_lost is not None:  # the end was the first write the store's file refused
            self._store_lost(status if ended else None)
        if stopped:  # one line for the user (seglab.errors), not the traceback of wherever training was
            code = EXIT_TERMINATED if issubclass(exc_type, signals.Terminated) else EXIT_INTERRUPTED
            after = (f"run the same command again to continue run {self.run.run_id}" if self._training
                     else f"MLflow run {self.run.run_id} is KILLED")
            raise Interrupted(f"{stopped}; {after}", code) from exc
        return False

    def _store_lost(self, ended_as: str | None) -> None:
        """The SQLite store's own file refused a write (seglab.tracking.store.StoreWriteFailed), whatever the command
        was doing when it ends: the run was ended (`ended_as`: FAILED if the store took that) or is left as it is,
        and the command ends with one line (exit 2) naming the file, the fix, how to go on and what the run is now."""
        lost, run_id = self.run.store_lost, self.run.run_id
        again = f"resume with trainer.resume={run_id}" if self._training else "run the command again"
        state = (f"run {run_id} is ended {ended_as}" if ended_as
                 else f"run {run_id} is left RUNNING in it (the store could not be written to end it)")
        raise StoreWriteFailed(f"{lost}; {lost.fix}, then {again}; {state}", lost.path, lost.fix) from lost

    def _end(self, status: str, error: str | None) -> bool:
        if status == FINISHED and self._previous_error is not None:
            # A finished run is not in error: the killed attempt's reason moves to a tag of its own.
            try:
                self.run.set_tags({keys.RESUME_PREVIOUS_ERROR: self._previous_error})
                self.run.delete_tag(keys.ERROR)
            except StoreWriteFailed:
                pass  # the Run keeps it (`store_lost`): the command's last line says it, after the status is tried
        if self.run.failed is not None:
            log.warning("MLflow run %s is incomplete: logging failed at %s; not logged after that: %s.",
                        self.run.run_id, self.run.failed, _summary(self.run.skipped))
        return self.run.end(status, error)

    def _put_back(self) -> None:
        """The resume was refused before training changed anything (a checkpoint that does not fit the
        model, which the params check before reopening did not foresee): the run is left as it was."""
        try:
            self.run.end(self._before.status)  # no longer the active run; put_back then restores its end time
            resumable.put_back(self.run.uri, self._before)
        except STORE_ERRORS as err:
            log.warning("could not return MLflow run %s to how it was (%s)", self.run.run_id, first_line(err))

    @property
    def _training(self) -> bool:
        """A training run (it has a run key): the same command continues it (trainer.resume=auto)."""
        return keys.RUN_KEY in self.run.tags

    def _stopped(self, exc_type) -> str | None:
        """Why Ctrl-C or SIGTERM stopped the run, for a training run with the epoch it was in (1-based,
        as the console counts); None for any other ending."""
        if exc_type is None or not issubclass(exc_type, (KeyboardInterrupt, signals.Terminated)):
            return None
        how = "terminated (SIGTERM)" if issubclass(exc_type, signals.Terminated) else "interrupted (Ctrl-C)"
        return f"{how} at epoch {self.run.epochs_done + 1}" if self._training else how


def _summary(items: list[str], shown: int = 4) -> str:
    if len(items) <= 2 * shown:
        return ", ".join(items) or "nothing"
    return f"{len(items)} calls: {', '.join(items[:shown])}, ..., {', '.join(items[-shown:])}"

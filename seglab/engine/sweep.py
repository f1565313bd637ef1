"""Sweeps in MLflow: one parent run per `--multirun`, every job a child run of it.

`MlflowSweep` is a Hydra callback (conf/config.yaml, `hydra.callbacks`).  When a multirun starts it
opens the parent run and exports its id as the environment variable `SEGLAB_PARENT_RUN_ID`, which
each job reads through its config (`tracking.parent_run_id: ${oc.env:SEGLAB_PARENT_RUN_ID,null}`).
Launchers that run jobs in other processes or on other machines (joblib, submitit locally or on
SLURM) hand the environment on, so the layout is the same for all of them.  When the multirun ends
the callback reads the children back from MLflow, whichever process ran them, and logs the summary
to the parent.  A single run never calls it.

Before the parent opens, `check_jobs` composes and validates every job of a basic-sweeper sweep (the
grid Hydra will launch): one bad job stops the sweep in one line, exit 2, before any job trains.
`run_job` is the task function of a sweep job: a failing job (training failed; a job an optuna
search chose that does not validate) is recorded as a FAILED child run with its error and returns no
objective, so the other jobs go on; the sweep then exits non-zero, naming the failed jobs.

A stopped sweep stops its jobs: SIGTERM or Ctrl-C to the sweep's process (joblib, submitit_local or
the basic launcher) ends the processes it started (joblib kills its workers when its wait is cut
short; `end_jobs` sends the rest SIGTERM, so a job ends its run KILLED itself, then SIGKILL after
`STOP_GRACE_S`); a SLURM sweep (submitit_slurm) cancels its jobs still queued or running
(seglab.engine.slurm.cancel_jobs: `scancel`, SIGTERM too, never a requeue) and waits as long for SLURM
to let them go.  Then it ends the children still RUNNING and the parent KILLED, with the reason, and
exits 143 or 130; the same command continues the sweep.
"""

# Lazy imports: MLflow loads only when a sweep starts, submitit only for a SLURM sweep: this Hydra callback is loaded by every `python -m seglab`.

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

import psutil
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from seglab import console, errors, tracking
from seglab.config import launcher as launchers
from seglab.config import preflight, schema
from seglab.engine import claim, lifecycle
from seglab.engine.lifecycle import in_multirun  # noqa: F401  seglab.__main__ asks sweep.in_multirun()
from seglab.tracking import tags as keys
from seglab.util import objective

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "SEGLAB_PARENT_RUN_ID"
ABANDONED_ERROR = "the sweep stopped before it ended"
ORPHAN_ERROR = "the job's process ended without closing its run (killed? out of memory?); re-run the sweep to continue it"
RUN_NAME_MAX_CHARS = 200  # long grids make long names; the full definition is in the parent's sweep.yaml
JOB_ERROR_CHARS = 300  # of each failed job's error in the sweep's last line; the whole error is the child run's tag
STOPPED_ERROR = "the sweep was stopped ({how}); re-run the same command to continue it"
STOP_GRACE_S = 10  # a stopped sweep's jobs get this long after SIGTERM to end their runs KILLED, then SIGKILL


def run_job(cfg: DictConfig, train: Callable[[DictConfig], float]) -> float | None:
    """Validate and train one job of a sweep.  A failure is logged, recorded on the job's MLflow run
    (FAILED, `error` tag) and turned into "no objective" (None), so the sweep goes on.  None rather
    than NaN: hydra-optuna-sweeper marks a trial FAILED for a value that is not a number, but crashes
    on NaN (optuna 2.x rejects it in `tell`)."""
    try:
        schema.validate(cfg)
    except (schema.ConfigError, OmegaConfBaseException) as err:
        log.error("job %d: invalid combination, skipped: %s", HydraConfig.get().job.num, err)
        _record_invalid_job(cfg, err)
        return None
    done = _finished_result(cfg)
    if done is not None:
        log.info("job %d: already FINISHED in this sweep (MLflow run %s), skipped; %s=%s", HydraConfig.get().job.num, done[0],
                 cfg.optimize_metric, done[1])
        return done[1]
    try:
        return train(cfg)
    except Exception as err:  # noqa: BLE001  the job's run already ended FAILED with the error; the sweep must go on
        # One line on the console (seglab.console.ConsoleFormatter leaves the traceback to the job's log file).
        reason = errors.explain(err) or f"{type(err).__name__}: {errors.one_line(err)}"[:JOB_ERROR_CHARS]
        files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        log.error("job %d failed: %s (its MLflow run, if it was opened, is FAILED with the error%s); the sweep goes on",
                  HydraConfig.get().job.num, reason, f"; the traceback is in {files[0]}" if files else "", exc_info=True)
        return None


def _finished_result(cfg: DictConfig) -> tuple[str, float] | None:
    """A re-run sweep skips a job its parent already has FINISHED (same run key): (run id, objective)."""
    parent = OmegaConf.select(cfg, "tracking.parent_run_id")
    if not parent or cfg.trainer.resume != "auto":
        return None
    return lifecycle.finished_result(cfg.tracking.uri, cfg.tracking.experiment, lifecycle.run_key(cfg), parent, cfg.optimize_metric)


def _record_invalid_job(cfg: DictConfig, err: Exception) -> None:
    from seglab.tracking import sweeps as sweep_runs

    parent = OmegaConf.select(cfg, "tracking.parent_run_id")
    sweep_runs.record_failed_run(cfg.tracking.uri, cfg.tracking.experiment, lifecycle.run_name(cfg), lifecycle.tags(cfg), parent, err)


# --- the parent run ------------------------------------------------------------------------


def sweep_definition(config: DictConfig) -> dict[str, Any]:
    """What was swept: the command-line sweep overrides (`a=1,2`), the sweeper's own search space
    (`hydra.sweeper.params`), the fixed overrides, and which sweeper and launcher ran it."""
    overrides = list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.key_or_group: o.input_line.split("=", 1)[1] for o in parsed if o.is_sweep_override()}
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    # The sweeper's search space, except keys the command line sets itself (Hydra lets those win).
    on_command_line = {o.key_or_group for o in parsed}
    params = config.hydra.sweeper.get("params") or {}
    swept.update({str(k): str(v) for k, v in params.items() if str(k) not in on_command_line})
    choices = config.hydra.runtime.choices
    return {
        "swept": swept,
        "fixed_overrides": fixed,
        "sweeper": choices.get("hydra/sweeper"),
        "launcher": choices.get("hydra/launcher"),
        "optimize_metric": config.optimize_metric,
        "sweep_dir": str(config.hydra.sweep.dir),
    }


def sweep_name(config: DictConfig, definition: dict[str, Any]) -> str:
    """A preset's name when the sweep comes from one (`+experiment=`, `+hparams_search=`), else what is swept."""
    choices = config.hydra.runtime.choices
    for group in ("experiment", "hparams_search"):
        if choices.get(group):
            return str(choices[group])
    swept = " ".join(f"{k}={v}" for k, v in definition["swept"].items())
    return f"sweep {swept}".strip()[:RUN_NAME_MAX_CHARS]


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, as the basic sweeper expands them (its `params`, then the command line);
    None for a sweeper that chooses its jobs as it goes (optuna)."""
    if config.hydra.runtime.choices.get("hydra/sweeper") != "basic":
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return expand(parsed)


def expand(overrides: list[Override]) -> list[list[str]]:
    """The jobs of the basic sweeper: the product of every key's values, in the order the keys first come,
    a later override of a key replacing an earlier one (as Hydra's BasicSweeper, whose `split_arguments`
    is not public API)."""
    values: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:  # an interval: only a search sweeper (optuna) samples one
            raise HydraException(f"BasicSweeper does not support sweep type : {override.value_type.name}")
    return [list(job) for job in itertools.product(*values.values())]


def check_jobs(config: DictConfig) -> None:
    """Compose and validate every job before the first trains (and before the parent run opens): a bad
    job is one line naming it, exit 2.  A search that picks its jobs as it goes (optuna) is checked
    with its fixed settings, a value every trial would share; each trial is validated again when it
    starts (`run_job`)."""
    jobs = job_overrides(config)
    if jobs is None:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        _check_job(config, [o.input_line for o in parsed if not o.is_sweep_override()], "every trial of the search")
        return
    swept = set(sweep_definition(config)["swept"])
    for num, overrides in enumerate(jobs):
        values = " ".join(o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept) or "(defaults)"
        _check_job(config, overrides, f"sweep job {num} ({values})")


def _check_job(config: DictConfig, overrides: list[str], job: str) -> None:
    """One job composed as the launcher will compose it, and validated as `run_job` will.  A composition
    error already names the override it could not apply; a schema error names a key, so `job` is added."""
    try:
        job_cfg = GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
    except Exception as err:
        _fail_or_raise(err)
    with open_dict(job_cfg):
        del job_cfg["hydra"]  # as the task function receives it
    try:
        schema.validate(job_cfg)
    except Exception as err:
        _fail_or_raise(err, f"{job}: ", "; no job was run: fix that value or leave it out of the sweep")


def _fail_or_raise(err: Exception, before: str = "", after: str = "") -> None:
    """A user's mistake (seglab.errors.explain knows it): one line, exit 2; anything else is a bug: raised."""
    message = errors.explain(err)
    if message is None:
        raise err
    errors.fail("seglab", f"{before}{message.rstrip('.') if after else message}{after}")


def failed_jobs_message(rows: list[dict[str, Any]], job_errors: dict[str, str], parent: str) -> str | None:
    """One line naming the jobs that did not finish and why (`job_errors`: run id -> its `error` tag);
    None when every job finished."""
    failed = [r for r in rows if r["status"] != "FINISHED"]
    if not failed:
        return None
    how_many = f"all {len(rows)}" if len(failed) == len(rows) else f"{len(failed)} of {len(rows)}"

    def why(row: dict[str, Any]) -> str:
        error = errors.one_line(job_errors.get(row["run_id"], ""))
        return f": {error[:JOB_ERROR_CHARS]}{'...' if len(error) > JOB_ERROR_CHARS else ''}" if error else ""

    each = "; ".join(f"job {r['job']} ({r['overrides']}): {r['status']}{why(r)}" for r in failed)
    return (f"{how_many} jobs of the sweep failed: {each}; each child run of MLflow run {parent} has its error as the "
            f"`error` tag (`python -m seglab.report {parent}`)")


def _check_direction(config: DictConfig) -> None:
    """An optuna search must optimise `optimize_metric` the way seglab ranks it (losses down, scores up)."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction")
    if direction is None or config.hydra.runtime.choices.get("hydra/sweeper") != "optuna":
        return
    expected = "minimize" if objective.minimized(str(config.optimize_metric)) else "maximize"
    if str(direction) != expected:
        raise ValueError(
            f"hydra.sweeper.direction={direction} but optimize_metric={config.optimize_metric} should be {expected}d: "
            f"add hydra.sweeper.direction={expected}"
        )


class MlflowSweep(Callback):
    """One MLflow parent run per multirun; see the module docstring."""

    def __init__(self) -> None:
        self.uri: str | None = None
        self.parent_run_id: str | None = None
        self.stopped_by: str | None = None  # "SIGTERM" or "Ctrl-C", once one stopped the sweep
        self.on_slurm = False  # hydra/launcher=submitit_slurm (or the slurm preset): a stop cancels its jobs through SLURM

    # Hydra turns an Exception raised by a callback into a warning and goes on with exit code 0;
    # SystemExit is not an Exception, so a sweep that cannot be tracked, or any of whose jobs failed,
    # stops with a message and a non-zero exit.

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:

        verbose = bool(config.get("verbose")) or bool(config.hydra.verbose)
        try:  # the parent's artifacts go there too: checked before it opens
            console.quiet(verbose)  # refuses another Keras backend
            preflight.check_store(config.tracking.uri, experiment=config.tracking.experiment)
            launchers.check(config.hydra.launcher)  # n_jobs=0, timeout_min=0: a traceback once the jobs start
        except errors.UserError as err:
            errors.fail("seglab", str(err))
        console.plain_optuna(verbose, config.hydra.runtime.choices.get("hydra/sweeper"))
        check_jobs(config)  # exits 2 in one line; nothing opened yet
        if "slurm" in str(config.hydra.launcher.get("_target_", "")).lower():
            from seglab.engine import slurm  # submitit: only for SLURM sweeps

            slurm.skip_sacct_without_accounting()
            slurm.keep_job_ids()  # cancelled if the sweep stops (`_end_abandoned`)
            self.on_slurm = True
        try:
            self._start(config)
        except Exception as err:
            raise SystemExit(f"seglab sweep: {type(err).__name__}: {err}") from err

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            failed = self._end(config)
        except Exception as err:
            raise SystemExit(f"seglab sweep: {type(err).__name__}: {err}") from err
        if failed:
            raise SystemExit(f"seglab: {failed}")  # exit 1: the jobs ran and failed (a mistake found before is 2)

    def _start(self, config: DictConfig) -> None:
        from seglab.tracking import sweeps as sweep_runs

        _check_direction(config)
        tracking.check_reachable(config.tracking.uri)
        definition = sweep_definition(config)
        self.uri = config.tracking.uri
        key = lifecycle.sweep_key(config, definition)
        tags = {
            **claim.owner_tags(),
            keys.SWEEP_KEY: key,
            keys.SWEEP: keys.SWEEP_PARENT,
            **lifecycle.override_tags(config.hydra.overrides.task),
            keys.HYDRA_SWEEPER: definition["sweeper"],
            keys.HYDRA_LAUNCHER: definition["launcher"],
            keys.HYDRA_SWEEP_DIR: definition["sweep_dir"],
        }
        launcher = OmegaConf.to_container(config.hydra.launcher, resolve=False)
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
        texts = {
            "sweep.yaml": OmegaConf.to_yaml({**definition, "hydra_sweeper": sweeper, "hydra_launcher": launcher}),
            "config.yaml": OmegaConf.to_yaml({k: v for k, v in config.items() if k != "hydra"}),
        }
        self.parent_run_id = self._resumable_parent(config, key, tags)
        if self.parent_run_id is None:
            self.parent_run_id = sweep_runs.start_parent_run(self.uri, config.tracking.experiment, sweep_name(config, definition), tags, texts)
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        os.environ[lifecycle.SWEPT_KEYS_ENV] = json.dumps(sorted(definition["swept"]))  # for the jobs' run names
        # Hydra calls on_multirun_end only when the sweeper returns; a sweep that raises (or Ctrl-C)
        # must not leave the parent RUNNING.
        atexit.register(self._end_abandoned)
        self._stop_on_signals()
        sweep_runs.log_to_run(self.uri, self.parent_run_id, params={f"sweep.{k}": v for k, v in definition["swept"].items()})
        log.info("sweep: MLflow parent run %s in experiment %r, tracking.uri=%s", self.parent_run_id, config.tracking.experiment, self.uri)

    def _resumable_parent(self, config: DictConfig, key: str, tags: dict[str, str]) -> str | None:
        """The parent run of the same sweep (same `seglab.sweep_key`) that never reached its end (killed,
        stopped), reopened so its finished jobs are skipped and its unfinished ones continue; None: a new sweep."""
        from seglab.tracking import sweeps as sweep_runs

        if config.trainer.resume == "never":
            return None
        parent = lifecycle.resumable_parent(self.uri, config.tracking.experiment, key, 60 * config.trainer.heartbeat_timeout_min)
        if parent is not None:
            sweep_runs.reopen_run(self.uri, parent, tags)
            log.info("sweep: continuing the unfinished sweep of MLflow parent run %s", parent)
        return parent

    def _end(self, config: DictConfig) -> str | None:
        """Summarise the sweep on its parent and end it; the line naming the failed jobs, None when all finished."""
        from seglab.engine import summary  # matplotlib and MLflow: only when a sweep ends
        from seglab.tracking import sweeps as sweep_runs

        assert self.uri and self.parent_run_id, "on_multirun_end without on_multirun_start"
        uri, parent = self.uri, self.parent_run_id
        metric = config.optimize_metric
        sweep_runs.kill_running_children(uri, parent, ORPHAN_ERROR)
        children = sweep_runs.child_runs(uri, parent)
        rows = summary.rows(children, metric)
        succeeded = sum(r["status"] == "FINISHED" for r in rows)
        metrics: dict[str, float] = {"jobs_total": len(rows), "jobs_succeeded": succeeded, "jobs_failed": len(rows) - succeeded}
        params: dict[str, Any] = {}
        tags: dict[str, Any] = {}
        texts = {"summary.md": summary.to_markdown(rows, metric), "summary.csv": summary.to_csv(rows, metric)}
        best = summary.best(rows, metric)
        if best is not None:
            metrics[f"best_{metric}"] = best["objective"]
            tags[keys.BEST_RUN] = best["run_id"]
            params.update({f"best.{k}": v for k, v in best["combination"].items()})
        optuna_results = Path(str(config.hydra.sweep.dir)) / "optimization_results.yaml"
        if optuna_results.exists():  # hydra-optuna-sweeper's own account of the study
            study = OmegaConf.load(optuna_results)
            params.update({f"best.{k}": v for k, v in (study.get("best_params") or {}).items()})
            texts["optimization_results.yaml"] = optuna_results.read_text()
        with tempfile.TemporaryDirectory() as tmp:
            plot = summary.plot_objective(rows, metric, Path(tmp) / "objective.png")
            tags[keys.SWEEP_ENDED] = "true"  # a re-run of this sweep starts a new one instead of reopening it
            sweep_runs.log_to_run(uri, parent, metrics=metrics, params=params, tags=tags, texts=texts, files={str(plot): ""})
        sweep_runs.end_run(uri, parent, failed=succeeded == 0)
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(lifecycle.SWEPT_KEYS_ENV, None)
        self.parent_run_id = None
        log.info(
            "sweep done: %d of %d jobs succeeded%s | MLflow parent run %s, tracking.uri=%s | `python -m seglab.report %s`",
            succeeded, len(rows), f", best {metric} {best['objective']:.4f} ({best['overrides']})" if best else "",
            parent, uri, parent,
        )
        return failed_jobs_message(rows, {c.run_id: c.tags.get(keys.ERROR, "") for c in children}, parent)

    def _stop_on_signals(self) -> None:
        """SIGTERM (and Ctrl-C, where it is not ignored: nohup, `&`) raise `errors.Interrupted` here, where Python's
        default would end this process at once and leave the jobs running and the parent RUNNING; the launcher's
        wait is cut short (joblib then ends its workers) and `_end_abandoned` ends the rest at exit."""
        signal.signal(signal.SIGTERM, self._stop)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        terminated = signum == signal.SIGTERM
        self.stopped_by = "SIGTERM" if terminated else "Ctrl-C"
        raise errors.Interrupted(
            f"sweep stopped ({self.stopped_by}): its jobs are ended and MLflow parent run {self.parent_run_id} is KILLED; "
            "run the same command again to continue it", errors.EXIT_TERMINATED if terminated else errors.EXIT_INTERRUPTED)

    def _end_abandoned(self) -> None:
        from seglab.tracking import resumable
        from seglab.tracking import sweeps as sweep_runs

        if self.parent_run_id is None:
            return
        if self.on_slurm:  # scancel: SIGTERM, so a job ends its run KILLED; no requeue
            from seglab.engine import slurm  # imported already, by on_multirun_start

            try:
                slurm.cancel_jobs(STOP_GRACE_S)
            except Exception as err:  # noqa: BLE001  at exit: the runs below are ended whatever SLURM answered
                log.warning("could not cancel the sweep's SLURM jobs (%s)", err)
        end_jobs()
        stopped_by = self.stopped_by or errors.interrupted_by
        # The one line seglab printed, when it printed one (e.g. SLURM refused the jobs), is the reason.
        reason = f"{ABANDONED_ERROR}: {errors.reported}" if errors.reported else f"{ABANDONED_ERROR} (see Hydra's log)"
        try:
            if stopped_by:
                sweep_runs.kill_running_children(self.uri, self.parent_run_id, STOPPED_ERROR.format(how=stopped_by))
                resumable.end_killed(self.uri, self.parent_run_id, STOPPED_ERROR.format(how=stopped_by))
                return
            sweep_runs.kill_running_children(self.uri, self.parent_run_id, ORPHAN_ERROR)
            sweep_runs.end_run(self.uri, self.parent_run_id, failed=True, error=reason)
        except Exception as err:  # at interpreter exit there is nobody left to raise to
            log.warning("could not end the sweep's MLflow run %s: %s", self.parent_run_id, err)


def end_jobs() -> None:
    """End every process this one started and their own (joblib's workers, submitit_local's jobs): SIGTERM, so a job
    ends its run KILLED, then SIGKILL to those still there after STOP_GRACE_S."""
    jobs = psutil.Process().children(recursive=True)
    for job in jobs:
        with contextlib.suppress(psutil.Error):
            job.terminate()
    _, alive = psutil.wait_procs(jobs, timeout=STOP_GRACE_S)
    for job in alive:
        with contextlib.suppress(psutil.Error):
            job.kill()
    psutil.wait_procs(alive, timeout=STOP_GRACE_S)

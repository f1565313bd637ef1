"""The sweep launchers' own options (`hydra.launcher.*`), checked before the sweep's parent run opens and before any
job starts: Hydra's launcher plugins check none of them, and a wrong one ends a sweep in a joblib or submitit traceback."""

from __future__ import annotations

from omegaconf import DictConfig

from seglab.config.check import require

JOBLIB = "hydra_plugins.hydra_joblib_launcher."
SUBMITIT = "hydra_plugins.hydra_submitit_launcher."


def check(launcher: DictConfig) -> None:
    """ConfigError naming a launcher option the launcher would fail on, or run no job with."""
    target = str(launcher.get("_target_", ""))
    if target.startswith(JOBLIB):
        n_jobs = launcher.get("n_jobs")
        require(n_jobs != 0, "hydra.launcher.n_jobs", n_jobs,
                "use the number of jobs to run at once (>= 1), or -1 for one per CPU (joblib has no meaning for 0)")
    if target.startswith(SUBMITIT):
        minutes = launcher.get("timeout_min")
        require(minutes is None or minutes >= 1, "hydra.launcher.timeout_min", minutes,
                "use the minutes each job may run, >= 1 (submitit ends a job when they are up: with 0 every job ends "
                "before it starts)")

"""Who a run is, in one place: its name, its tags, and its run key.  Read by `seglab.train` (a job
that trains) and `seglab.sweep` (the sweep's parent, and a job that fails before training).

The **run key** is a hash of the resolved config that defines the experiment: the same key means
"the same experiment", so `trainer.resume=auto` continues a killed run only when the re-run asks
for the same thing.  Left out (`NOT_IN_KEY`): what only says how long to train, where to write or
log, how often to checkpoint or what to show, not what is learned:

- `trainer.epochs` (more epochs continue a finished run only when asked: `trainer.resume=<run id>`),
  `trainer.resume`, `trainer.checkpoint_every`, `trainer.heartbeat_timeout_min`;
- `trainer.checkpoint_dir` (an output path), `trainer.mask_samples` (a picture, not a result);
- `tracking.*` (where and under which name it is logged, whether the model is logged; the sweep's
  parent is matched separately);
- `data.cache` (memory or file cache: the same pixels), `data.source.connect_timeout`,
  `data.source.cache_dir` (where converted COCO TFRecords are kept).

Everything else is in: model, loss, data (and its paths: other files are other data), optimizer,
learning-rate schedule, batch size, XLA (it changes the arithmetic), seed, determinism and
`optimize_metric` (it picks the best checkpoint).

This module knows Hydra (job number, overrides, chosen options); `seglab.tracking` does not.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import seglab

NOT_IN_KEY = (
    "trainer.epochs", "trainer.resume", "trainer.checkpoint_every", "trainer.heartbeat_timeout_min",
    "trainer.checkpoint_dir", "trainer.mask_samples",
    "tracking.*",
    "data.cache", "data.source.connect_timeout", "data.source.cache_dir",
)
KEY_TAG = "seglab.run_key"
SWEEP_KEY_TAG = "seglab.sweep_key"
SWEEP_ENDED_TAG = "seglab.sweep.ended"  # set when a sweep reaches its end: a re-run is then a new sweep
OVERRIDES_TAG = "seglab.overrides"  # the command-line overrides as a JSON list (hydra.overrides joins them for people)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _in_key(name: str) -> bool:
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in NOT_IN_KEY)


def _digest(values: Any) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def experiment_values(cfg: DictConfig) -> dict[str, Any]:
    """The flattened, resolved config values that define the experiment (what the key hashes)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    return {k: v for k, v in _flat(resolved).items() if _in_key(k)}


def run_key(cfg: DictConfig) -> str:
    return _digest(experiment_values(cfg))


def _choice(cfg: DictConfig, group: str) -> str:
    """The chosen option of a group (`unet`, `ce`, `shapes`), as Hydra recorded it; without Hydra
    (train.run called directly), the data name or the module of the builder."""
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get(group) or group
    if group == "data":
        return cfg.data.name
    target = cfg[group]._target_
    return target.rsplit(".", 2)[-2 if target.endswith(".build") else -1].lower()


def run_name(cfg: DictConfig) -> str:
    """`tracking.run_name`, else `<model>-<loss>-<data>`; the jobs of a sweep share it, so the job
    number tells them apart in the run list (`-job<N>`)."""
    name = cfg.tracking.get("run_name") or "-".join(_choice(cfg, g) for g in ("model", "loss", "data"))
    return f"{name}-job{HydraConfig.get().job.num}" if in_multirun() else name


def tags(cfg: DictConfig) -> dict[str, str]:
    """What identifies a run and where it came from (the runtime adds device and library versions)."""
    found = {"seglab.version": seglab.__version__, KEY_TAG: run_key(cfg)}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        found.update(override_tags(hydra_cfg.overrides.task))
        found["hydra.output_dir"] = hydra_cfg.runtime.output_dir
    if in_multirun():
        found["seglab.sweep"] = "child"
        found["hydra.job.num"] = str(HydraConfig.get().job.num)
    commit = _git_commit()
    if commit:
        found["mlflow.source.git.commit"] = commit
    return found


def override_tags(overrides: Any) -> dict[str, str]:
    """The overrides a run or sweep was started with: joined for people to read in the UI
    (`hydra.overrides`), and as a JSON list for programs (`seglab.overrides`; a value may hold spaces)."""
    overrides = [str(o) for o in overrides]
    return {"hydra.overrides": " ".join(overrides) or "(defaults)", OVERRIDES_TAG: json.dumps(overrides)}


def overrides_of(tags: dict[str, str]) -> dict[str, str]:
    """`key -> value` of the overrides recorded by `override_tags` (`+experiment` keeps its prefix)."""
    return dict(item.split("=", 1) for item in json.loads(tags.get(OVERRIDES_TAG) or "[]") if "=" in item)


def sweep_key(config: DictConfig, definition: dict[str, Any]) -> str:
    """A sweep's identity: what it sweeps, its fixed overrides (those that enter a run key), its
    sweeper and objective; not its time-stamped directory, not its launcher (a killed joblib sweep
    may be finished with the basic launcher)."""
    fixed = sorted(o for o in definition["fixed_overrides"] if _in_key(o.split("=", 1)[0].lstrip("+~")))
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
    return _digest({"swept": definition["swept"], "fixed": fixed, "sweeper": sweeper, "metric": definition["optimize_metric"]})


def owner_tags() -> dict[str, str]:
    """Who is running a run now, so a later command can tell a live owner from a dead one
    (`seglab.resume.owner_alive`): host, pid (and the process's start time, against pid reuse), the
    scheduler's job id (a requeued job keeps it), and a heartbeat (Unix seconds)."""
    found = {"seglab.host": socket.gethostname(), "seglab.pid": str(os.getpid()), "seglab.heartbeat": str(int(time.time()))}
    started = process_start(os.getpid())
    if started:
        found["seglab.pid_start"] = started
    job = scheduler_job_id()
    if job:
        found["seglab.job_id"] = job
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


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None

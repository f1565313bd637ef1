"""A run's lifecycle, in one place: who a run is (its name, tags, run key, owner tags, overrides),
which run a command may write to (`plan`, or an explicit `trainer.resume=<run id>`), where a
continued run's checkpoint comes from (`restore_files`, `initial_epoch`), and whether a sweep's
parent can be reopened and which of its jobs already finished (`resumable_parent`,
`finished_result`).  Read by `seglab.engine.train` (a job that trains) and `seglab.engine.sweep`
(the sweep's parent, and a job that fails before training).  What it needs from the store comes
through `seglab.tracking.resumable` as plain values; this module decides.  See docs/resume.md.

The **run key** is a hash of the resolved config that defines the experiment: the same key means
"the same experiment", so `trainer.resume=auto` continues a killed run only when the re-run asks
for the same thing.  Left out (`NOT_IN_KEY`): what only says how long to train, where to write or
log, how often to checkpoint or what to show, not what is learned:

- `trainer.epochs` (more epochs continue a finished run only when asked: `trainer.resume=<run id>`),
  `trainer.resume`, `trainer.checkpoint_every`, `trainer.heartbeat_timeout_min`;
- `trainer.checkpoint_dir` (an output path), `trainer.mask_samples` (a picture, not a result),
  `trainer.score_test` (a score of the trained model, after training);
- `tracking.*` (where and under which name it is logged, whether the model is logged; the sweep's
  parent is matched separately);
- `data.cache` (memory or file cache: the same pixels), `data.source.connect_timeout`,
  `data.source.cache_dir` (where converted COCO TFRecords are kept).

Everything else is in: model, loss, data (and its paths: other files are other data), optimizer,
learning-rate schedule, batch size, XLA (it changes the arithmetic), seed, determinism and
`optimize_metric` (it picks the best checkpoint).

This module knows Hydra (job number, overrides, chosen options); `seglab.tracking` does not.

`trainer.resume`:
- `auto` (default): continue the newest run of the same experiment (same `seglab.run_key` tag, same
  sweep parent or none) that is KILLED, or RUNNING while its owner is dead; else start a new run.
  FINISHED and FAILED (an error) runs are never continued by `auto`.
- `never`: always a new run.
- `<run id>`: continue that run, whatever its status (a FINISHED one to train more epochs), unless
  another live process holds it (seglab.engine.claim; the run's owner, seglab.engine.owner, claims it), or it is not a training run (an evaluation run, a sweep's parent:
  `refuse_other_kind` names the id to use), or its logged params say it trained another architecture
  (`refuse_other_architecture`), refused before anything is written.

Whatever the mode, a RUNNING run of the same key whose owner is dead is not left RUNNING: it is
continued, or ended KILLED with the reason in the `seglab.killed_reason` tag.

Whichever run a command continues, its owner (seglab.engine.owner) claims it first: one atomic,
write-once claim in the store, so that one process writes to a run at a time (seglab.engine.claim says
who holds a run and when its holder is dead).  This module decides which run; the owner opens, holds
and ends it.
"""

# Lazy imports: MLflow loads only when the store is read: the sweep callback and `--cfg` read run identity first.

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import seglab
from seglab.config.check import ConfigError
from seglab.config.data import size_of
from seglab.engine import checkpoint, claim
from seglab.errors import UserError
from seglab.tracking import tags as keys
from seglab.tracking.params import as_text, flatten

log = logging.getLogger(__name__)

NOT_IN_KEY = (
    "trainer.epochs", "trainer.resume", "trainer.checkpoint_every", "trainer.heartbeat_timeout_min",
    "trainer.checkpoint_dir", "trainer.mask_samples", "trainer.score_test",
    "tracking.*",
    "data.cache", "data.source.connect_timeout", "data.source.cache_dir",
)


# --- who a run is: its name, tags, run key, owner ------------------------------------------


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


# Set by a sweep (seglab.engine.sweep) for its jobs: the keys it sweeps, as a JSON list.
SWEPT_KEYS_ENV = "SEGLAB_SWEPT_KEYS"
RUN_NAME_CHARS = 100  # a name the run list shows whole; every override is in the `hydra.overrides` tag
_NAME_GROUPS = ("model", "loss", "data")


def run_name(cfg: DictConfig) -> str:
    """`tracking.run_name`, else `<model>-<loss>-<data>`.  A sweep's job adds its number and its values
    of the swept keys (`unet-ce-shapes-job1 optimizer.learning_rate=0.01`; a swept group already in the
    name is not repeated), so the jobs can be told apart in the run list; at most RUN_NAME_CHARS."""
    given = cfg.tracking.get("run_name")
    name = given or "-".join(_choice(cfg, g) for g in _NAME_GROUPS)
    if not in_multirun():
        return name
    hydra_cfg = HydraConfig.get()
    swept = set(json.loads(os.environ.get(SWEPT_KEYS_ENV) or "[]")) - (set() if given else set(_NAME_GROUPS))
    values = [o for o in map(str, hydra_cfg.overrides.task) if o.split("=", 1)[0].lstrip("+~") in swept]
    full = " ".join([f"{name}-job{hydra_cfg.job.num}", *values])
    return full if len(full) <= RUN_NAME_CHARS else f"{full[:RUN_NAME_CHARS - 3]}..."


def tags(cfg: DictConfig) -> dict[str, str]:
    """What identifies a run and where it came from (the runtime adds device and library versions)."""
    found = {keys.VERSION: seglab.__version__, keys.RUN_KEY: run_key(cfg)}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        found.update(override_tags(hydra_cfg.overrides.task))
        found[keys.HYDRA_OUTPUT_DIR] = hydra_cfg.runtime.output_dir
    if in_multirun():
        found[keys.SWEEP] = keys.SWEEP_CHILD
        found[keys.HYDRA_JOB_NUM] = str(HydraConfig.get().job.num)
    commit = _git_commit()
    if commit:
        found[keys.GIT_COMMIT] = commit
    return found


def override_tags(overrides: Any) -> dict[str, str]:
    """The overrides a run or sweep was started with: joined for people to read in the UI
    (`hydra.overrides`), and as a JSON list for programs (`seglab.overrides`; a value may hold spaces)."""
    overrides = [str(o) for o in overrides]
    return {keys.HYDRA_OVERRIDES: " ".join(overrides) or "(defaults)", keys.OVERRIDES: json.dumps(overrides)}


def overrides_of(tags: dict[str, str]) -> dict[str, str]:
    """`key -> value` of the overrides recorded by `override_tags` (`+experiment` keeps its prefix)."""
    return dict(item.split("=", 1) for item in json.loads(tags.get(keys.OVERRIDES) or "[]") if "=" in item)


def sweep_key(config: DictConfig, definition: dict[str, Any]) -> str:
    """A sweep's identity: what it sweeps, its fixed overrides (those that enter a run key), its
    sweeper and objective; not its time-stamped directory, not its launcher (a killed joblib sweep
    may be finished with the basic launcher)."""
    fixed = sorted(o for o in definition["fixed_overrides"] if _in_key(o.split("=", 1)[0].lstrip("+~")))
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
    return _digest({"swept": definition["swept"], "fixed": fixed, "sweeper": sweeper, "metric": definition["optimize_metric"]})


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# --- which run a command continues, and from which checkpoint --------------------------------


class ResumeError(UserError, ValueError):
    """`trainer.resume` names a run that cannot be continued; the message says why and what to do."""


@dataclass
class Plan:
    run_id: str | None  # the run to continue; None: a new run
    previous_tags: dict[str, str] = field(default_factory=dict)  # its tags before this command changed them
    status: str | None = None  # its status when found
    previous_params: dict[str, str] = field(default_factory=dict)  # the params it logged (its config)
    record: Any = None  # the run as found (a tracking.resumable.RunRecord), what the run's owner claims


def plan(mode: str, uri: str, experiment: str, key: str, parent_run_id: str | None, timeout_s: float) -> Plan:
    """Which run this command continues (see the module docstring); ends dead RUNNING runs it does not continue."""
    from seglab.tracking import resumable  # MLflow loads when a command asks the store, not on import

    if mode not in ("auto", "never"):
        return _explicit(mode, uri, experiment, timeout_s)
    same = [r for r in resumable.find_runs(uri, experiment, {keys.RUN_KEY: key})
            if r.tags.get(keys.PARENT_RUN) == (parent_run_id or None)]
    dead_running = [r for r in same if r.status == "RUNNING" and not claim.held(r, timeout_s)]
    chosen = None
    if mode == "auto":
        chosen = next((r for r in same if r.status == "KILLED" or r in dead_running), None)
    for run in dead_running:
        if run is not chosen:
            why = f"continued by run {chosen.run_id} instead" if chosen else "a new run was started with trainer.resume=never"
            resumable.end_killed(uri, run.run_id, f"its process ({claim.describe(claim.holder(run))}) is gone; {why}")
            log.warning("run %s was RUNNING with its process gone: ended KILLED", run.run_id)
    if chosen is None:
        return Plan(None)
    log.info("trainer.resume=auto: continuing %s run %s (same run key %s)", chosen.status, chosen.run_id, key)
    return Plan(chosen.run_id, chosen.tags, chosen.status, chosen.params, chosen)


def _explicit(run_id: str, uri: str, experiment: str, timeout_s: float) -> Plan:
    from seglab.tracking import resumable

    if resumable.sqlite_absent(uri):  # asking would create it, to find nothing
        raise ResumeError(f"trainer.resume={run_id}: tracking.uri={uri} does not exist yet, so it holds no run; give the "
                          "store that holds the run, or trainer.resume=auto")
    try:
        run = resumable.get_run(uri, run_id)
    except Exception as err:  # noqa: BLE001  MLflow's not-found error; the message below names the fix
        raise ResumeError(f"trainer.resume={run_id}: no such run in tracking.uri={uri} ({err}); use a run id from "
                          "the MLflow UI, or trainer.resume=auto") from err
    if run.deleted:
        raise ResumeError(f"trainer.resume={run_id}: run {run_id} is deleted (the MLflow UI's Delete, or `mlflow runs "
                          f"delete`); restore it first (`MLFLOW_TRACKING_URI={resumable.shown(uri)} mlflow runs restore --run-id "
                          f"{run_id}`), or train a new run with trainer.resume=never")
    refuse_other_kind(run_id, run.tags)
    run_experiment = resumable.experiment_of(uri, run_id)
    if run_experiment != experiment:
        raise ResumeError(f"trainer.resume={run_id} is a run of experiment {run_experiment!r}, not {experiment!r}: "
                          f"add tracking.experiment={run_experiment!r}")
    return Plan(run_id, run.tags, run.status, run.params, run)


def refuse_other_kind(run_id: str, tags: dict[str, str]) -> None:
    """A command that trains writes only to a training run (issue 21: decided from the store, before
    the run is opened): an evaluation run or a sweep's parent is refused, naming the id to use."""
    if keys.SPLIT in tags or keys.TRAINING_RUN in tags:
        training = tags.get(keys.TRAINING_RUN)
        what = f"an evaluation run (seglab.evaluate, split {tags.get(keys.SPLIT, '?')})"
        use = (f"to train its model more, add trainer.resume={training} (its training run)" if training
               else "its training run is not recorded: give a training run's id, or trainer.resume=auto")
        raise ResumeError(f"trainer.resume={run_id} is {what}, not a training run; {use}")
    if tags.get(keys.SWEEP) == keys.SWEEP_PARENT:
        raise ResumeError(f"trainer.resume={run_id} is a sweep's parent run, not a training run; continue one of its jobs "
                          f"with trainer.resume=<its run id> (`python -m seglab.report {run_id}` lists them), or re-run "
                          "the sweep with trainer.resume=auto")


class CheckpointOwned(ResumeError):
    """`trainer.checkpoint_dir` holds the checkpoint of another run (two runs given one absolute directory)."""


def refuse_other_owner(directory: Path, run_id: str | None) -> None:
    """A checkpoint directory belongs to one run (issue 21): the run a command writes to (`run_id`,
    None for a new run) refuses a directory whose state file names another run, before that run is
    opened, so neither run's checkpoint nor record changes.  A state file that names no run (written
    before they did) is taken as the run's own."""
    state = directory / checkpoint.STATE_FILE
    owner = checkpoint.saved_run_id(state) if state.exists() else None
    if owner is None or owner == run_id:
        return
    which = f"trainer.resume={run_id}: " if run_id else ""
    raise CheckpointOwned(f"{which}trainer.checkpoint_dir={directory} holds the checkpoint of run {owner}, not of "
                          f"{'this run' if run_id else 'a new run'}; give this run another trainer.checkpoint_dir, "
                          f"or continue that run with trainer.resume={owner}")


# What the checkpoint's variables are made of: the model group (all of it: MLflow keeps a param's first
# value, so a run whose model settings changed would describe a model it no longer holds), what the builder
# is given, and the optimizer (its state's variables; optimizer.ema adds the averages).  A resume changing any of
# these is refused.
ARCHITECTURE = ("model.*", "data.num_classes", "data.image_size", "optimizer._target_", "optimizer.ema")


def same_size(text: str):
    """A logged data.image_size as (height, width), so that one side and [side, side] compare equal."""
    try:
        return size_of(ast.literal_eval(text))
    except (ValueError, SyntaxError, ConfigError):
        return text


class OtherArchitecture(ResumeError):
    """`trainer.resume` of a run whose logged params say it trained another model or optimizer."""


def refuse_other_architecture(found: Plan, cfg: DictConfig) -> None:
    """A resume must continue the model the run holds: decided from the run's logged params, before
    the run is reopened or any model is built (a second model built to compare would rename the
    resumed one's layers).  A run that logged no params (killed before) is left to the checkpoint's
    own shape check."""
    if found.run_id is None or not found.previous_params:
        return
    now = as_text(flatten(OmegaConf.to_container(cfg, resolve=True)))

    def architecture(params: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in params.items() if any(fnmatch.fnmatchcase(k, p) for p in ARCHITECTURE)}

    def same(key: str) -> bool:  # data.image_size 64 and [64, 64] build the same model
        value = same_size if key == "data.image_size" else str
        return key in before and key in after and value(before[key]) == value(after[key])

    before, after = architecture(found.previous_params), architecture(now)
    differ = sorted(k for k in before.keys() | after.keys() if not same(k))
    if not differ:
        return
    changes = ", ".join(f"{k}={before.get(k, '(none)')} -> {after.get(k, '(none)')}" for k in differ)
    back = " ".join(f"{k}={before[k].replace(', ', ',')}" for k in differ if k in before)  # [32,64]: one shell word
    raise OtherArchitecture(f"trainer.resume={cfg.trainer.resume}: run {found.run_id} trained another architecture "
                            f"({changes}); start a new run with trainer.resume=never, or set them back: {back}")


class CheckpointGone(ResumeError):
    """The run to continue has a checkpoint on record, but neither its artifacts nor this machine hold it."""

    resume_refused = True  # seglab.engine.owner: the run keeps its status and tags


def _gone(run_id: str, uploaded: str, epoch: int) -> str:
    return (f"cannot continue run {run_id}: its checkpoint (epoch {epoch}, artifact '{uploaded}') is gone from the "
            "run's artifacts and this machine has no copy; put it back, or train a new run with trainer.resume=never")


def refuse_checkpoint_gone(found: Plan, uri: str, checkpoint_dir: Path, current_dir: Path) -> None:
    """A run whose checkpoint is on record (tag `seglab.checkpoint`) but deleted from its artifacts and absent
    from this machine is refused before it is claimed, so the store is left exactly as it was; one deleted
    between this look and the download is refused after the claim (restore_files), the run put back."""
    from seglab.tracking import resumable

    uploaded = found.previous_tags.get(keys.CHECKPOINT)
    if found.run_id is None or uploaded is None:
        return
    if _local_checkpoint(found.run_id, found.previous_tags, checkpoint_dir, current_dir) is not None:
        return
    if not resumable.holds_artifact(uri, found.run_id, uploaded, checkpoint.STATE_FILE):
        raise CheckpointGone(_gone(found.run_id, uploaded, int(found.previous_tags.get(keys.CHECKPOINT_EPOCH, -1))))


class NothingLeft(ResumeError):
    """`trainer.resume=<id>` of a FINISHED run that already has the epochs asked for."""


def refuse_nothing_left(found: Plan, epochs: int) -> None:
    """Continuing a FINISHED run to no more epochs than it has would only log its model again:
    refused before the run is opened (docs/resume.md says why this is an error, exit 2)."""
    if found.run_id is None or found.status != "FINISHED":
        return
    done = int(found.previous_tags.get(keys.CHECKPOINT_EPOCH, -1))
    if done >= epochs:
        raise NothingLeft(f"nothing left to train: run {found.run_id} already has {done} epochs; "
                          f"add trainer.epochs=M (M > {done}) to train more")


def restore_files(uri: str, run_id: str, previous_tags: dict[str, str], checkpoint_dir: Path, current_dir: Path) -> Path | None:
    """Put the newest complete checkpoint of the run into `current_dir` (the state file and the best
    model) and return the state file's path; None when the run has none.  Looked for in the killed
    job's own directory on this machine (`hydra.output_dir` tag), and in the run's artifacts (the
    upload named by the `seglab.checkpoint` tag: another machine, e.g. after a SLURM requeue);
    the one with more epochs wins."""
    from seglab.tracking import resumable

    local = _local_checkpoint(run_id, previous_tags, checkpoint_dir, current_dir)
    local_epoch = checkpoint.saved_epoch(local / checkpoint.STATE_FILE) if local else -1
    uploaded = previous_tags.get(keys.CHECKPOINT)
    uploaded_epoch = int(previous_tags.get(keys.CHECKPOINT_EPOCH, -1)) if uploaded else -1
    if local is None and uploaded is None:
        return None
    source, staging = None, current_dir.parent / f".{current_dir.name}.download"
    if uploaded_epoch > local_epoch and not resumable.holds_artifact(uri, run_id, uploaded, checkpoint.STATE_FILE):
        if local is None:  # deleted since refuse_checkpoint_gone looked
            raise CheckpointGone(_gone(run_id, uploaded, uploaded_epoch))
        log.warning("the uploaded checkpoint %s (epoch %d) of run %s is gone from its artifacts (the listing answered)",
                    uploaded, uploaded_epoch, run_id)
    elif uploaded_epoch > local_epoch:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            source = resumable.download_checkpoint(uri, run_id, uploaded, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("resuming from the uploaded checkpoint %s (epoch %d)", uploaded, uploaded_epoch)
    if source is None:
        source, staging = local, None
        log.info("resuming from the local checkpoint %s (epoch %d)", local, local_epoch)
    current_dir.mkdir(parents=True, exist_ok=True)
    if source.resolve() != current_dir.resolve():
        for name in (checkpoint.BEST_FILE, checkpoint.STATE_FILE):  # the state last: it is what says a checkpoint is complete
            if (source / name).exists():
                _copy_atomic(source / name, current_dir / name)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    return current_dir / checkpoint.STATE_FILE


def _local_checkpoint(run_id: str, previous_tags: dict[str, str], checkpoint_dir: Path, current_dir: Path) -> Path | None:

    candidates = [current_dir]
    if previous_tags.get(keys.HYDRA_OUTPUT_DIR):
        candidates.append(Path(previous_tags[keys.HYDRA_OUTPUT_DIR]) / checkpoint_dir)
    found = [d for d in candidates if (d / checkpoint.STATE_FILE).exists()]
    others = [d for d in found if checkpoint.saved_run_id(d / checkpoint.STATE_FILE) not in (None, run_id)]
    for directory in others:  # another run wrote there since (the same directory given to two runs): not this run's weights
        log.warning("not resuming from %s: its checkpoint belongs to run %s", directory,
                    checkpoint.saved_run_id(directory / checkpoint.STATE_FILE))
    found = [d for d in found if d not in others]
    if not found:
        return None
    return max(found, key=lambda d: checkpoint.saved_epoch(d / checkpoint.STATE_FILE))


def _copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.copy")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def initial_epoch(found: Plan, uri: str, model, checkpointer, checkpoint_dir: str) -> int:
    """Load the newest complete checkpoint of the run being continued into the compiled `model` and
    the `checkpointer`; the epochs it completed (0 for a new run, or one killed before its first)."""

    if found.run_id is None:
        return 0
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
    from seglab.tracking import resumable

    for run in resumable.find_runs(uri, experiment, {keys.RUN_KEY: key, keys.PARENT_RUN: parent_run_id}):
        if run.status == "FINISHED" and keys.best(metric) in run.tags:
            return run.run_id, float(run.tags[keys.best(metric)])
    return None


def resumable_parent(uri: str, experiment: str, sweep_key: str, timeout_s: float) -> str | None:
    """The newest parent run of a sweep with this key that did not reach its end and whose owner is gone."""
    from seglab.tracking import resumable

    parents = resumable.find_runs(uri, experiment, {keys.SWEEP: keys.SWEEP_PARENT, keys.SWEEP_KEY: sweep_key})
    if not parents or keys.SWEEP_ENDED in parents[0].tags:
        return None
    newest = parents[0]
    if newest.status == "RUNNING" and claim.owner_alive(newest.tags, timeout_s):
        return None  # the same sweep is running now, elsewhere: this one is a new sweep
    return newest.run_id

"""`trainer.strategy`: where one training runs, with tf.distribute (data parallelism).

- `auto`: `multi_worker` when TF_CONFIG describes a cluster of more than one task, `mirrored` when
  this machine has more than one GPU, else TensorFlow's default strategy (no wrapping at all).
- `one_device`: the first GPU, else the CPU.
- `mirrored`: one replica per local GPU (per logical CPU device when there is no GPU), gradients
  all-reduced every step (`tf.distribute.MirroredStrategy`).
- `multi_worker`: one process per machine (e.g. one SLURM task each), each with its TF_CONFIG
  naming the cluster and its own task (`tf.distribute.MultiWorkerMirroredStrategy`).

`trainer.batch_size` is the GLOBAL batch: each step splits it evenly over all replicas of all
workers, so the same config gives the same number of steps per epoch on any number of devices.
Keras divides each replica's loss by the number of replicas and the gradients are summed, so one
step is the step of one device on the global batch (up to float rounding, see docs/performance.md).
Metric variables (the confusion matrix) are summed over replicas when read.

Only the chief (TF_CONFIG task `chief`, or `worker` 0 when the cluster has no chief) logs to MLflow
and keeps checkpoints; the other workers run the same steps (every collective needs every worker)
and write their checkpoints to a temporary directory that is deleted at the end.

Nothing here imports TensorFlow at module level: `check` runs before TensorFlow loads.
"""

# Lazy imports: `check` runs before TensorFlow loads (a multi-worker cluster must be configured before it starts).

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from seglab.errors import UserError


class DistributeError(UserError, ValueError):
    """The strategy cannot run in this environment; the message says what to set."""


def cluster() -> dict[str, Any] | None:
    """The parsed TF_CONFIG (`{"cluster": {...}, "task": {"type": ..., "index": ...}}`), or None."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        task_type, index = config["task"]["type"], int(config["task"]["index"])
        members = config["cluster"][task_type]
    except (ValueError, KeyError, TypeError) as err:
        raise DistributeError(
            f"TF_CONFIG={raw!r} is not valid ({type(err).__name__}: {err}): it must be JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
        ) from err
    if not 0 <= index < len(members):
        raise DistributeError(f"TF_CONFIG task index {index} is not in the cluster's {len(members)} {task_type!r} tasks")
    return config


def cluster_size(config: dict[str, Any] | None) -> int:
    return sum(len(v) for k, v in config["cluster"].items() if k != "ps") if config else 1


def is_chief() -> bool:
    """True for the process that logs to MLflow and keeps the checkpoints (every process without TF_CONFIG)."""
    config = cluster()
    if config is None:
        return True
    task_type, index = config["task"]["type"], int(config["task"]["index"])
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in config["cluster"])


def resolve(name: str) -> str:
    """The strategy `name` stands for here (`auto` decided; a multi_worker without TF_CONFIG refused)."""
    config = cluster()
    if name == "multi_worker" and config is None:
        raise DistributeError(
            "trainer.strategy=multi_worker needs TF_CONFIG in each process's environment, naming the cluster and "
            'this task, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": '
            '"worker", "index": 0}}\' (index 1 on host2); for one machine use trainer.strategy=mirrored or auto.'
        )
    if name == "auto" and cluster_size(config) > 1:
        return "multi_worker"
    return name


def check(name: str, resume: str) -> None:
    """Fail before TensorFlow loads when the strategy cannot run here, or cannot run with `resume`:
    resuming needs every worker to start from the same checkpoint, which only the chief looks for."""
    if resolve(name) == "multi_worker" and resume != "never":
        raise DistributeError(
            f"trainer.resume={resume} is not supported with a multi-worker strategy yet (trainer.strategy={name}"
            f"{', TF_CONFIG set' if name == 'auto' else ''}): add trainer.resume=never."
        )


def make(name: str):
    """The tf.distribute strategy for `trainer.strategy=name`.  Create it first in the process: a
    multi-worker strategy configures collective ops, which TensorFlow allows only before it starts."""
    import tensorflow as tf

    name = resolve(name)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((gpus or tf.config.list_logical_devices("CPU"))[0].name)
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


def checkpoint_directory(path: Path):
    """A context giving where this process keeps its checkpoints: `path` on the chief; on any other
    worker a temporary directory, deleted on exit (it must still save: reading the metric variables
    to save them is a collective that every worker joins)."""
    if is_chief():
        return contextlib.nullcontext(Path(path))
    return _temporary_path()


@contextlib.contextmanager
def _temporary_path():
    with tempfile.TemporaryDirectory(prefix="seglab-worker-") as directory:
        yield Path(directory)


"""`trainer.strategy`: where one training runs, with tf.distribute (data parallelism).

- `auto`: `multi_worker` when TF_CONFIG describes a cluster of more than one task, `mirrored` when
  this machine has more than one GPU, else TensorFlow's default strategy (no wrapping at all).
- `one_device`: the first GPU, else the CPU.
- `mirrored`: one replica per local GPU (per logical CPU device when there is no GPU), gradients
  all-reduced every step (`tf.distribute.MirroredStrategy`).
- `multi_worker`: one process per machine (e.g. one SLURM task each), each with its TF_CONFIG
  naming the cluster and its own task, or built from SLURM's variables under `srun` (`slurm_cluster`) (`tf.distribute.MultiWorkerMirroredStrategy`), trained by
  seglab's own loop (seglab/engine/multi_worker.py: Keras 3's fit does not run under it).

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
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from seglab import console
from seglab.errors import UserError


class DistributeError(UserError, ValueError):
    """The strategy cannot run in this environment; the message says what to set."""


def cluster() -> dict[str, Any] | None:
    """The parsed TF_CONFIG (`{"cluster": {...}, "task": {"type": ..., "index": ...}}`); without one, the
    cluster of the `srun` job step this process is a task of (`slurm_cluster`); else None."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return slurm_cluster(os.environ)
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


# A job step's workers listen on SLURM_PORT_BASE + (job id mod SLURM_PORT_JOBS) * SLURM_PORTS_PER_NODE + the
# task's index on its node: two jobs sharing a node get other ports (up to SLURM_PORTS_PER_NODE tasks a node).
SLURM_PORT_BASE, SLURM_PORT_JOBS, SLURM_PORTS_PER_NODE = 15000, 5000, 8


def slurm_cluster(env) -> dict[str, Any] | None:
    """Inside an `srun` step of more than one task: one worker per task, as TF_CONFIG would name them (SLURM's
    default block distribution: tasks 0..k-1 on the first node, and so on), this task's index its SLURM_PROCID."""
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) < 2 or "SLURM_PROCID" not in env:
        return None
    hosts = _hostnames(env["SLURM_STEP_NODELIST"])
    per_node = [int(n) for part in env["SLURM_STEP_TASKS_PER_NODE"].split(",")  # e.g. "2(x3),1"
                for n in [part.split("(")[0]] * (int(part.split("(x")[1].rstrip(")")) if "(x" in part else 1)]
    port = SLURM_PORT_BASE + int(env["SLURM_JOB_ID"]) % SLURM_PORT_JOBS * SLURM_PORTS_PER_NODE
    workers = [f"{host}:{port + local}" for host, tasks in zip(hosts, per_node) for local in range(tasks)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": int(env["SLURM_PROCID"])}}


def _hostnames(nodelist: str) -> list[str]:
    """SLURM's compressed node list (`node[01-03],gpu1`) as host names: scontrol expands it when it is compressed."""
    if "[" not in nodelist:
        return nodelist.split(",")
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True,
                          timeout=60).stdout.split()


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
            '"worker", "index": 0}}\' (index 1 on host2), or to run as the tasks of an srun with more than one task; '
            'for one machine use trainer.strategy=mirrored or auto.'
        )
    if name == "auto" and cluster_size(config) > 1:
        return "multi_worker"
    return name


def check(name: str, jit_compile: bool = False, steps_per_execution: int = 1) -> None:
    """Fail before TensorFlow loads when the strategy cannot run here, or not with these trainer settings:
    the multi-worker loop (seglab.engine.multi_worker) runs one step per call, without XLA.  A TF_CONFIG naming a
    cluster must be asked for by name: one left in the environment would make `auto` wait for its other workers
    forever, and a non-chief task under another strategy would train without logging anything."""
    refuse_stray_tf_config(name)
    if resolve(name) != "multi_worker":
        return
    which = f"trainer.strategy={name}{', TF_CONFIG set' if name == 'auto' else ''}"
    for unsupported, value, fix in ((jit_compile, "trainer.jit_compile=true", "trainer.jit_compile=false"),
                                    (steps_per_execution != 1, f"trainer.steps_per_execution={steps_per_execution}",
                                     "trainer.steps_per_execution=1")):
        if unsupported:
            raise DistributeError(f"{value} is not supported with a multi-worker strategy yet ({which}): add {fix}.")


def refuse_stray_tf_config(name: str) -> None:
    """TF_CONFIG naming a cluster of several tasks, without trainer.strategy=multi_worker.  Not under an srun step of
    several tasks: there `auto` is that step's cluster, and `make` sets TF_CONFIG from it."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if name == "multi_worker" or not raw or slurm_cluster(os.environ) is not None:
        return
    tasks = cluster_size(cluster())
    if tasks > 1:
        raise DistributeError(
            f"TF_CONFIG in the environment names a cluster of {tasks} tasks, but trainer.strategy={name}: training would "
            "wait for the other workers, forever if none is started; add trainer.strategy=multi_worker to train as this "
            "task of that cluster, or unset TF_CONFIG (left over from another job?)"
        )


def make(name: str):
    """The tf.distribute strategy for `trainer.strategy=name`.  Create it first in the process: a
    multi-worker strategy configures collective ops, which TensorFlow allows only before it starts."""
    import tensorflow as tf

    name = resolve(name)
    if name == "multi_worker":
        # Under srun without TF_CONFIG: the cluster SLURM describes, in the form TensorFlow reads.
        os.environ.setdefault("TF_CONFIG", json.dumps(cluster()))
        with console.native_quiet():  # absl's "Started server with target: grpc://..." (TF_CPP_MIN_LOG_LEVEL misses it)
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


"""TensorFlow's thread pools as a process runs them, as run params: a reduction split over a different
number of intra-op threads sums in another order, so bit-identity holds between runs with the same
thread settings only (docs/reproducibility.md).  TensorFlow-free, so `seglab.check_determinism` reads
the names without loading it."""

from __future__ import annotations

import os

INTRA_OP = "runtime.intra_op_threads"  # run params: threads of one op (a matmul, a convolution)
INTER_OP = "runtime.inter_op_threads"  # ops run at the same time
PARAMS = (INTRA_OP, INTER_OP)
# TensorFlow reads these when it creates its thread pools (a sweep's +hydra.job.env_set.TF_NUM_INTRAOP_THREADS=1).
ENV = {INTRA_OP: "TF_NUM_INTRAOP_THREADS", INTER_OP: "TF_NUM_INTEROP_THREADS"}


def schedulable_cores() -> int:
    """The cores this process may run on, TensorFlow's default size of both pools."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def effective(configured: dict[str, int] | None = None) -> dict[str, int]:
    """{param: threads}: the environment variable when set (> 0), else the value set through
    tf.config.threading (`configured`, 0: not set), else TensorFlow's default, one per schedulable core."""
    found = {}
    for param, variable in ENV.items():
        from_env = os.environ.get(variable, "").strip()
        set_in_tf = (configured or {}).get(param, 0)
        found[param] = int(from_env) if from_env.isdigit() and int(from_env) > 0 else set_in_tf or schedulable_cores()
    return found

"""`python -m seglab.check_determinism [overrides]`: is training reproducible here, bit for bit?

Trains the same short run twice, each in its own process (`python -m seglab OVERRIDES`, with
`deterministic: true`), then compares the final training state (every model and optimizer
variable in the state file, `seglab.engine.checkpoint.STATE_FILE`) and every per-epoch metric
logged to MLflow, bit for bit; wall-clock metrics (`epoch_seconds`, `train_seconds`,
`train_images_per_second`) are left out. Prints a verdict and exits 0 when both runs are identical,
1 when they differ (naming the first difference).
Both runs log to a throw-away store in a temporary directory, not to `tracking.uri`.
"""

# Lazy imports: MLflow loads once the arguments are checked (TensorFlow only in the two training processes).

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from seglab import console, errors
from seglab.cli import helptext
from seglab.config import schema
from seglab.engine.checkpoint import RUN_ID, STATE_FILE
from seglab.util import threads

WALL_CLOCK_METRICS = ("epoch_seconds", "train_seconds", "train_images_per_second")
CHECKPOINT_DIR = "checkpoints"  # trainer.checkpoint_dir of both runs
EXPERIMENT = "check-determinism"


def train(overrides: list[str], workdir: Path) -> subprocess.CompletedProcess:
    """One training in a fresh process, its outputs (and its MLflow store and artifacts) under `workdir`."""
    from seglab.tracking.sweeps import create_experiment

    workdir.mkdir(parents=True)
    create_experiment(f"sqlite:///{workdir}/mlflow.db", EXPERIMENT, (workdir / "artifacts").as_uri())
    args = [
        *overrides, "deterministic=true", f"hydra.run.dir={workdir}", f"trainer.checkpoint_dir={CHECKPOINT_DIR}",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"tracking.experiment={EXPERIMENT}", "tracking.log_model=false",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("SEGLAB_PARENT_RUN_ID", None)
    done = subprocess.run([sys.executable, "-m", "seglab", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["(no message)"]
        raise errors.UserError(f"the training run failed (exit code {done.returncode}): {last[0]}")
    return done


def weights_difference(a: Path, b: Path) -> str | None:
    """The first variable that differs in any bit, or None."""


    with np.load(a) as first, np.load(b) as second:
        if sorted(first.files) != sorted(second.files):
            return f"the checkpoints hold different variables ({len(first.files)} vs {len(second.files)})"
        for key in sorted(set(first.files) - {RUN_ID}, key=_natural):  # two runs: two run ids
            x, y = first[key], second[key]
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                diff = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))) if x.shape == y.shape else float("nan")
                return f"variable {key} {x.shape} differs (max |difference| {diff:.3g})"
    return None


def metrics_difference(a: dict, b: dict) -> str | None:
    """The first metric value that differs in any bit, or None."""
    for key in sorted((set(a) | set(b)) - set(WALL_CLOCK_METRICS)):
        first, second = a.get(key, []), b.get(key, [])
        if [s for s, _ in first] != [s for s, _ in second]:
            return f"metric {key} has steps {[s for s, _ in first]} vs {[s for s, _ in second]}"
        for (step, x), (_, y) in zip(first, second):
            if struct.pack("<d", x) != struct.pack("<d", y):
                return f"metric {key} at epoch {step}: {x!r} vs {y!r}"
    return None


def _natural(key: str):
    group, _, index = key.partition("/")
    return (group, int(index) if index.isdigit() else -1, key)


def check(overrides: list[str]) -> tuple[bool, str]:
    """(identical?, verdict line)."""
    cfg = schema.compose(overrides)  # a mistake in the overrides: one line now, not after two trainings
    console.quiet(console.is_verbose(cfg))  # before MLflow loads: no "Creating initial MLflow database tables"
    from seglab.tracking.sweeps import latest_run_metrics
    with tempfile.TemporaryDirectory(prefix="seglab-determinism-") as tmp:
        runs = [Path(tmp) / name for name in ("first", "second")]
        for run in runs:
            train(overrides, run)
        histories, params = zip(*(latest_run_metrics(f"sqlite:///{run}/mlflow.db", EXPERIMENT) for run in runs))
        states = [run / CHECKPOINT_DIR / STATE_FILE for run in runs]
        difference = weights_difference(*states) or metrics_difference(*histories)
        compared = [k for k in histories[0] if k not in WALL_CLOCK_METRICS]
        epochs = max((len(v) for v in histories[0].values()), default=0)
    what = " ".join(overrides) or "(defaults)"
    settings = [thread_settings(p) for p in params]
    if settings[0] != settings[1]:  # not like with like: a different split of each reduction may change the last bits
        return False, (f"not comparable: the two runs of `python -m seglab {what}` ran with different thread settings "
                       f"({settings[0]} vs {settings[1]}); set TF_NUM_INTRAOP_THREADS and TF_NUM_INTEROP_THREADS and run again")
    if difference:
        return False, f"NOT deterministic: two runs of `python -m seglab {what}` with {settings[0]} differ: {difference}"
    return True, (
        f"deterministic: two runs of `python -m seglab {what}` with {settings[0]} ended with bit-identical weights and "
        f"optimizer state and bit-identical values of {len(compared)} metrics over {epochs} epochs (other thread "
        "counts can differ in the last bits: docs/reproducibility.md)"
    )


def thread_settings(params: dict[str, str]) -> str:
    """'2 intra-op and 2 inter-op threads', from a run's params (seglab.util.threads)."""
    return f"{params.get(threads.INTRA_OP, '?')} intra-op and {params.get(threads.INTER_OP, '?')} inter-op threads"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if helptext.print_usage(argv, __doc__):
        return 0
    identical, verdict = check(argv)
    print(verdict)
    return 0 if identical else 1


def cli() -> None:
    """`python -m seglab.check_determinism` (seglab/check_determinism.py)."""
    sys.exit(errors.main(main, prog="seglab.check_determinism"))

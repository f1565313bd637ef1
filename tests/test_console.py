"""The console of a default run: one short line per epoch and a last line naming the run, nothing else."""

from __future__ import annotations

import os
import re

import pytest
from mlflow.tracking import MlflowClient

from seglab import console
from tests.conftest import TINY

EXPECTED = (
    re.compile(r"epoch +\d+/\d+  loss \d\.\d{4}  val mIoU \d\.\d{4}  val Dice \d\.\d{4}  \d+\.\d s  best val_mean_iou \d\.\d{4} \(epoch \d+\)"),
    re.compile(r"best val_mean_iou \d\.\d{4} at epoch \d+; checkpoints in \S+; MLflow run (\w+): .*#/experiments/(\d+)/runs/(\w+)"),
)


def _quiet_env() -> dict[str, str]:
    """The user's environment: no TF_CPP_MIN_LOG_LEVEL of the test helpers, no MLflow logging level."""
    return {name: value for name, value in os.environ.items() if name not in console.QUIET_ENV}


@pytest.mark.slow
def test_default_run_prints_only_epoch_lines_and_the_run_address(tmp_path):
    done = subprocess_run_quiet(tmp_path, *TINY)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    unexpected = [line for line in lines if not any(p.fullmatch(line) for p in EXPECTED)]
    assert not unexpected, "\n".join(unexpected)
    epochs = [line for line in lines if EXPECTED[0].fullmatch(line)]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    last = EXPECTED[1].fullmatch(lines[-1])
    assert last and last.group(1) == last.group(3)
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(last.group(1))
    assert run.info.experiment_id == last.group(2)
    assert "val_iou_boundary" in run.data.metrics  # per-class values: in MLflow, not on the console
    assert "iou_boundary" not in done.stdout


@pytest.mark.slow
def test_verbose_brings_the_library_notices_back(tmp_path):
    done = subprocess_run_quiet(tmp_path, *TINY, "trainer.epochs=1", "tracking.log_model=false", "verbose=true")
    assert "mlflow" in done.stderr.lower() and "tensorflow" in done.stderr.lower()


def subprocess_run_quiet(tmp_path, *args):
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**_quiet_env(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "seglab", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_ui_address_of_a_server_run_and_of_a_local_store():
    assert console.ui_address("http://host:5000/", "3", "abc") == "http://host:5000/#/experiments/3/runs/abc"
    local = console.ui_address("sqlite:///mlflow.db", "3", "abc")
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in local and local.endswith("#/experiments/3/runs/abc")

"""Many commands at once against one store (issue 32): 8 tiny trainings and 2 evaluations started in the same
second, on a SQLite file and on the tracking server of tests/tracking_stack.py (PostgreSQL, S3 artifacts).  Every
run ends FINISHED, none is left RUNNING, and no metric holds two values at one step.  The wall time and the CPU
the commands used are printed (`pytest -s`): docs/runs.md, "Many commands at once", has the figures."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import CLI_ENV, inherited_env, run_cli

# As small as a training gets (16 images, one epoch, a 4-filter two-level U-Net): the load is the commands' number.
LOAD = ("data.image_size=32", "data.source.train_size=16", "data.source.val_size=8", "data.source.test_size=16",
        "model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=8", "trainer.mask_samples=1")
TRAININGS, EVALUATIONS = 8, 2
TIMEOUT_S = 1500  # ten commands sharing two loaded cores


def start(module: str, args: list[str], cwd: Path, name: str) -> subprocess.Popen:
    """A command in its own interpreter (the tests' zygote forks one command at a time), its output in files."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env={**inherited_env(), **CLI_ENV},
                            stdout=open(cwd / f"{name}.out", "w"), stderr=open(cwd / f"{name}.err", "w"))


def all_at_once(uri: str, experiment: str, cwd: Path, model_uri: str) -> dict[str, float]:
    """The trainings (one config, so one run key: each must start its own run beside the others) and the
    evaluations, started together; the wall seconds until the last ended and the CPU seconds they used."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # tracking.log_model=false: logging a model is seconds of CPU each and no other kind of write.
    training = [*LOAD, f"tracking.uri={uri}", f"tracking.experiment={experiment}", "tracking.log_model=false"]
    procs = {f"train{i}": start("seglab", training, cwd, f"train{i}") for i in range(TRAININGS)}
    procs.update({f"eval{i}": start("seglab.evaluate", [f"model_uri={model_uri}", f"tracking.uri={uri}", *LOAD[:4]], cwd,
                                    f"eval{i}") for i in range(EVALUATIONS)})
    codes = {name: proc.wait(timeout=TIMEOUT_S) for name, proc in procs.items()}
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    failed = {name: (cwd / f"{name}.err").read_text()[-2000:] for name, code in codes.items() if code != 0}
    assert not failed, failed
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def check_store(uri: str, experiment: str, first_run: str) -> None:
    """The experiment holds 1 + 8 training runs and 2 evaluation runs, all FINISHED, every metric once per step,
    each training in an output directory of its own."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    statuses = Counter(r.info.status for r in runs)
    assert statuses == {"FINISHED": 1 + TRAININGS + EVALUATIONS}, statuses
    assert len([r for r in runs if r.data.tags.get("seglab.training_run_id") == first_run]) == EVALUATIONS
    twice = {}
    for run in runs:
        for key in run.data.metrics:
            steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
            twice.update({f"{run.info.run_id} {key} step {s}": n for s, n in steps.items() if n > 1})
    assert not twice, twice
    trainings = [r for r in runs if "seglab.run_key" in r.data.tags]
    assert len({r.data.tags["hydra.output_dir"] for r in trainings}) == 1 + TRAININGS


@pytest.mark.slow  # eleven commands: one training, then eight trainings and two evaluations at once
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_eight_trainings_and_two_evaluations_at_once_all_finish_each_step_once(store, tmp_path, request):
    uri = f"sqlite:///{tmp_path}/m.db" if store == "sqlite" else request.getfixturevalue("tracking_stack").uri
    experiment = f"load-{store}-{tmp_path.name}"  # the server's store is the session's: an experiment of this test's own
    run_cli(*LOAD, f"tracking.uri={uri}", f"tracking.experiment={experiment}", cwd=tmp_path, timeout=TIMEOUT_S)
    client = MlflowClient(uri)
    (first,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    figures = all_at_once(uri, experiment, tmp_path, f"runs:/{first.info.run_id}/model")
    print(f"\n{store}: {TRAININGS} trainings + {EVALUATIONS} evaluations at once: {figures['wall_s']:.0f} s wall, "
          f"{figures['cpu_s']:.0f} s CPU")
    check_store(uri, experiment, first.info.run_id)

"""Resume after any kill (docs/resume.md): a real `python -m seglab` killed with SIGKILL mid-epoch
and run again continues the same MLflow run and ends bit-identical to a run never interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from seglab.engine import checkpoint
from tests.conftest import CLI_ENV, TINY, inherited_env, run_cli, start_module
from tests.stores import fresh_store, store_of

TIMING = ("epoch_seconds", "train_seconds", "train_images_per_second")
RESUMABLE = (*TINY, "trainer.epochs=4", "data.source.train_size=64")


def start_cli(*args: str, cwd: Path, env: dict | None = None):
    store = store_of(args, cwd)  # the first process opens the store: migrated already, as run_cli does
    if store is not None:
        fresh_store(store)
    return start_module("seglab", *args, cwd=cwd, env=env)


def kill_at(proc, marker: str, timeout: float = 600, occurrence: int = 1) -> str:
    """SIGKILL the process (and its children) as soon as it prints `marker` the `occurrence`-th time."""
    seen, deadline = [], time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            occurrence -= 1
        if occurrence == 0:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "".join(seen)
        assert time.time() < deadline, "".join(seen[-50:])
    raise AssertionError(f"exited {proc.wait()} before printing {marker!r}:\n{''.join(seen[-50:])}")


def only_run(uri: str, experiment: str = "seglab-shapes", where: str = ""):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], filter_string=where)
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    return client, runs[0]


def children(uri: str) -> dict[str, object]:
    """The sweep's child runs by `model.base_filters`."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id], "tags.`seglab.sweep` = 'child'")
    return {r.data.params["model.base_filters"]: r for r in runs}


def histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}


def last_state(client: MlflowClient, run, tmp: Path) -> dict[str, np.ndarray]:
    path = client.download_artifacts(run.info.run_id, "checkpoints/last.state.npz", str(tmp))
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files if k != checkpoint.RUN_ID}  # two runs: two ids


def assert_same_training(a: tuple, b: tuple, tmp: Path, epochs: int) -> None:
    """One value per step for every metric, equal values (timings aside), equal final state bit for bit."""
    (client_a, run_a), (client_b, run_b) = a, b
    hist_a, hist_b = histories(client_a, run_a), histories(client_b, run_b)
    assert sorted(hist_a) == sorted(hist_b)
    for key, values in hist_b.items():
        assert [s for s, _ in values] == list(range(epochs)), (key, values)
        if key not in TIMING:
            assert values == hist_a[key], key
    state_a, state_b = last_state(client_a, run_a, tmp / "a"), last_state(client_b, run_b, tmp / "b")
    assert sorted(state_a) == sorted(state_b)
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)


def trained_once(tmp_path_factory, name: str, args: tuple[str, ...]) -> str:
    """The store of one uninterrupted run of `args`: what a module fixture compares the interrupted runs with."""
    cwd = tmp_path_factory.mktemp(name)
    uri = f"sqlite:///{cwd}/m.db"
    run_cli(*args, f"tracking.uri={uri}", cwd=cwd, timeout=900)
    return uri


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return trained_once(tmp_path_factory, "uninterrupted", RESUMABLE)


@pytest.mark.slow
def test_sigkill_mid_epoch_on_another_machine_then_rerun_continues_the_same_run_bit_identically(tmp_path, uninterrupted):
    """Killed in epoch 4 with the state uploaded after epoch 2 (checkpoint_every=2) and the job's output
    directory gone (a requeue on another node): the re-run downloads the epoch-2 state, redoes epoch 3
    (whose metrics are already logged: not logged again) and 4."""
    uri = f"sqlite:///{tmp_path}/m.db"
    args = (*RESUMABLE, f"tracking.uri={uri}", "trainer.checkpoint_every=2")
    kill_at(start_cli(*args, cwd=tmp_path), "epoch 3/4")  # the line ending epoch 3: epoch 4 is starting
    client, killed = only_run(uri)
    assert killed.info.status == "RUNNING"
    assert killed.data.tags["seglab.checkpoint"] == "resume/epoch-0002"
    shutil.rmtree(tmp_path / "outputs")  # another machine: the local checkpoints are not there

    done = run_cli(*args, cwd=tmp_path, timeout=900)
    assert "uploaded checkpoint resume/epoch-0002" in done.stdout + done.stderr
    client, resumed = only_run(uri)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert_same_training(only_run(uninterrupted), (client, resumed), tmp_path, epochs=4)


@pytest.mark.slow
def test_rerun_with_resume_never_ends_the_dead_run_killed_naming_why(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    args = (*TINY, f"tracking.uri={uri}")
    kill_at(start_cli(*args, cwd=tmp_path), "epoch 1/2")  # epoch 2 is starting
    run_cli(*args, "trainer.resume=never", "trainer.epochs=1", cwd=tmp_path, timeout=900)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert "is gone" in runs[0].data.tags["seglab.killed_reason"] and "trainer.resume=never" in runs[0].data.tags["seglab.killed_reason"]


@pytest.mark.slow
def test_killed_sweep_rerun_continues_its_parent_skips_finished_jobs_and_resumes_the_killed_one(tmp_path, uninterrupted):
    uri = f"sqlite:///{tmp_path}/m.db"
    args = ("--multirun", *RESUMABLE, "model.base_filters=3,4", f"tracking.uri={uri}")
    kill_at(start_cli(*args, cwd=tmp_path), "epoch 2/4", occurrence=2)  # job 0 done, job 1 in its third epoch
    _, parent = only_run(uri, where="tags.`seglab.sweep` = 'parent'")
    first = children(uri)
    assert parent.info.status == "RUNNING" and first["3"].info.status == "FINISHED" and first["4"].info.status == "RUNNING"

    done = run_cli(*args, cwd=tmp_path, timeout=900)
    assert "already FINISHED in this sweep" in done.stdout + done.stderr
    client, again = only_run(uri, where="tags.`seglab.sweep` = 'parent'")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.metrics["jobs_total"] == 2 and again.data.metrics["jobs_succeeded"] == 2
    now = children(uri)
    assert {k: r.info.run_id for k, r in now.items()} == {k: r.info.run_id for k, r in first.items()}
    assert now["3"].info.end_time == first["3"].info.end_time  # skipped, not trained again
    assert now["4"].info.status == "FINISHED"
    assert_same_training(only_run(uninterrupted), (client, now["4"]), tmp_path, epochs=4)


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_and_resumes_in_the_same_run(tmp_path, uninterrupted):
    """submitit's pre-emption signal (SIGUSR2, what SLURM sends before it requeues) to the job process
    during its third epoch: submitit requeues the job (hydra-submitit-launcher's checkpoint()), the
    run ends KILLED, and the requeued job continues it."""
    uri = f"sqlite:///{tmp_path}/m.db"
    sweep = start_cli("--multirun", "hydra/launcher=submitit_local", *RESUMABLE, "model.base_filters=4", f"tracking.uri={uri}",
                      cwd=tmp_path)
    deadline = time.time() + 600
    # the job's own output (PYTHONUNBUFFERED is inherited): the store is left alone while the job creates it
    while not any("epoch 2/4" in p.read_text() for p in tmp_path.glob("multirun/*/*/.submitit/*/*_log.out")):
        assert sweep.poll() is None and time.time() < deadline, sweep.stdout.read() if sweep.poll() is not None else "timeout"
        time.sleep(0.2)
    client, job = MlflowClient(uri), children(uri)["4"]
    os.kill(int(job.data.tags["seglab.pid"]), signal.SIGUSR2)
    out, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, out[-4000:]
    job_logs = "".join(p.read_text() for p in tmp_path.glob("multirun/*/*/.submitit/*/*_log.*"))
    assert "Requeued job" in job_logs or "preempted" in job_logs, job_logs[-3000:]
    now = children(uri)
    assert list(now) == ["4"] and now["4"].info.run_id == job.info.run_id and now["4"].info.status == "FINISHED"
    assert_same_training(only_run(uninterrupted), (client, now["4"]), tmp_path, epochs=4)


@pytest.mark.slow
def test_a_finished_run_trains_more_epochs_when_asked_by_id_and_refuses_another_architecture(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    run_cli(*TINY, f"tracking.uri={uri}", "tracking.log_model=false", cwd=tmp_path, timeout=900)
    client, first = only_run(uri)
    run_id = first.info.run_id

    refused = run_cli(*TINY, f"tracking.uri={uri}", "trainer.epochs=3", f"trainer.resume={run_id}", "model.base_filters=6",
                      cwd=tmp_path, timeout=900, check=False)
    assert refused.returncode == 2 and "another architecture" in refused.stderr.strip().splitlines()[-1]
    client, run = only_run(uri)
    assert (run.info.status, run.info.end_time, run.data.tags) == (first.info.status, first.info.end_time, first.data.tags)

    run_cli(*TINY, f"tracking.uri={uri}", "tracking.log_model=false", "trainer.epochs=3", f"trainer.resume={run_id}", cwd=tmp_path, timeout=900)
    client, run = only_run(uri)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert "trainer.epochs: 2 -> 3" in run.data.tags["seglab.resume.changed"]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [0, 1, 2]
    assert run.data.tags["seglab.checkpoint_epoch"] == "3"


# Issue 24's training options: EMA weights swapped in at each epoch's end, 3 batches per update (8 an epoch, so an
# epoch ends mid-accumulation), early stopping after 1 epoch without improvement.
# scheduler=poly: its decaying rate flattens this tiny run's metric so that early stopping fires within the 8 epochs
# (at the default constant rate it kept improving every epoch).
OPTIONS = (*RESUMABLE, "trainer.epochs=8", "optimizer.ema=true", "trainer.gradient_accumulation_steps=3",
           "trainer.early_stopping_patience=1", "scheduler=poly")


@pytest.fixture(scope="module")
def uninterrupted_options(tmp_path_factory):
    return trained_once(tmp_path_factory, "uninterrupted_options", OPTIONS)


def stop_epoch(history: list[tuple[int, float]], patience: int) -> int | None:
    """The first epoch `patience` epochs after the best so far (strictly higher), from the logged values."""
    best = 0
    for epoch, value in history:
        if value > history[best][1]:
            best = epoch
        if epoch - best >= patience:
            return epoch
    return None


@pytest.mark.slow
def test_ema_accumulation_and_early_stopping_stop_where_the_metric_says_and_log_the_effective_batch(uninterrupted_options):
    client, run = only_run(uninterrupted_options)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_mean_iou"))
    stopped = stop_epoch(history, patience=1)
    assert stopped is not None and stopped < 7, history  # the options make it stop early: a test of the stop
    assert [s for s, _ in history] == list(range(stopped + 1))
    assert run.data.tags["seglab.stopped_epoch"] == str(stopped + 1) and run.data.tags["seglab.checkpoint_epoch"] == str(stopped + 1)
    assert run.data.params["trainer.effective_batch_size"] == "24"


@pytest.mark.slow
@pytest.mark.parametrize("marker", ["epoch 1/8", "early stopping after epoch"])
def test_ema_accumulation_and_early_stopping_resume_bit_identically(tmp_path, uninterrupted_options, marker):
    """Killed after epoch 1 (EMA weights in the model, two batches' gradients accumulated), or after early
    stopping ended the training but before the run finished (the re-run trains nothing more)."""
    uri = f"sqlite:///{tmp_path}/m.db"
    kill_at(start_cli(*OPTIONS, f"tracking.uri={uri}", cwd=tmp_path), marker)
    run_cli(*OPTIONS, f"tracking.uri={uri}", cwd=tmp_path, timeout=900)
    client, resumed = only_run(uri)
    assert resumed.info.status == "FINISHED"
    _, first = only_run(uninterrupted_options)
    assert resumed.data.tags["seglab.stopped_epoch"] == first.data.tags["seglab.stopped_epoch"]
    epochs = int(first.data.tags["seglab.stopped_epoch"])  # counted from 1: the epochs trained
    assert_same_training(only_run(uninterrupted_options), (client, resumed), tmp_path, epochs=epochs)


@pytest.mark.slow
def test_two_resumes_of_one_run_started_at_once_one_trains_the_other_refuses_in_one_line(tmp_path):
    """One writer per run (seglab.engine.claim): two `trainer.resume=<id>` of the same run started together;
    exactly one trains it, the other exits 2 with one line naming the run and the process that holds it,
    and every metric has one value per step."""
    uri = f"sqlite:///{tmp_path}/m.db"
    common = (*TINY, f"tracking.uri={uri}", "tracking.log_model=false", "trainer.mask_samples=0")
    run_cli(*common, "trainer.epochs=1", cwd=tmp_path, timeout=900)
    client, first = only_run(uri)
    run_id = first.info.run_id
    # Two interpreters of their own (the tests' zygote forks one command at a time).
    procs = [subprocess.Popen([sys.executable, "-m", "seglab", *common, "trainer.epochs=2", f"trainer.resume={run_id}"],
                              cwd=tmp_path, env={**inherited_env(), **CLI_ENV}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    said = [p.communicate(timeout=900)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [s[-3000:] for s in said]
    refused = said[[p.returncode for p in procs].index(2)]
    last = refused.strip().splitlines()[-1]
    assert "Traceback" not in refused and last.startswith(f"seglab: trainer.resume={run_id}: run {run_id} "), refused[-3000:]
    assert "pid " in last and "on host" in last, last
    client, run = only_run(uri)
    assert run.info.status == "FINISHED" and run.data.tags["seglab.checkpoint_epoch"] == "2"
    for key, values in histories(client, run).items():
        assert [step for step, _ in values] == [0, 1], (key, values)

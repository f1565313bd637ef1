"""seglab on a real one-node SLURM cluster (tests/slurm_cluster.py): a sweep through
`hydra/launcher=submitit_slurm`, and what a user sees when SLURM is not there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from seglab.tracking import tags
from tests.conftest import signal_after
from tests.slurm_cluster import slurm_cluster  # noqa: F401
from tests.test_distribute import ENV, SAME_STEPS, assert_replicas_are_the_chiefs_checkpoint, histories, the_run
from tests.test_resume import RESUMABLE, assert_same_training, only_run, start_cli, uninterrupted  # noqa: F401
from tests.test_sweeps import ONE_THREAD, SWEEP_TINY, empty_store, parent_and_children, sweep  # noqa: F401

# The launcher values that fit the test's small node (docs/sweeps.md): one job at a time, two cores each;
# timeout_min > 10, or submitit takes the pre-emption signal for a time-out and does not requeue.
SMALL_NODE = (
    "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=2",
    "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30", "hydra.launcher.array_parallelism=1",
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_on_slurm_is_one_parent_with_finished_children_tagged_with_their_job_ids(tmp_path, empty_store, slurm_cluster):  # noqa: F811
    uri, _ = sweep(tmp_path, empty_store, "--multirun", *SMALL_NODE, *SWEEP_TINY, "model.base_filters=2,4")
    _, parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED" and parent.data.tags["hydra.launcher"] == "submitit_slurm"
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    job_ids = [c.data.tags[tags.JOB_ID] for c in children]
    assert len(set(job_ids)) == 2
    for job_id, task in zip(job_ids, ("0", "1")):  # SLURM's own record of the job that ran each child
        record = slurm_cluster.scontrol("show", "job", job_id)
        assert "JobState=COMPLETED" in record and f"ArrayTaskId={task}" in record, record


def ended_with(uri: str, reason: str) -> None:
    """Every run of the sweep ended (none RUNNING), the parent FAILED with `reason` in its error."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    _, parent, _ = parent_and_children(uri)
    assert parent.info.status == "FAILED" and reason in parent.data.tags[tags.ERROR]


@pytest.mark.timeout(300)
def test_a_slurm_sweep_without_slurm_says_so_in_one_line_and_ends_its_parent_with_the_reason(tmp_path, empty_store):  # noqa: F811
    # A PATH with Python but none of SLURM's commands, as on a machine without SLURM.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    uri, done = sweep(tmp_path, empty_store, "--multirun", *SMALL_NODE, *SWEEP_TINY, "model.base_filters=2,4", check=False,
                      env={"PATH": str(bare)})
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and said == [said[-1]] and said[-1].startswith("seglab: `srun` not found"), done.stderr
    ended_with(uri, "`srun` not found")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_slurm_preset_asking_for_gpus_the_cluster_lacks_says_so_and_ends_its_parent(tmp_path, empty_store, slurm_cluster):  # noqa: F811
    uri, done = sweep(tmp_path, empty_store, "--multirun", "hydra/launcher=slurm", "hydra.launcher.partition=debug", *SWEEP_TINY,
                      "model.base_filters=2,4", check=False)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith("seglab: SLURM refused the sweep's jobs (sbatch:") and "gres" in last, done.stderr
    ended_with(uri, "gres")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("stop", ["requeue", "preempt"])
def test_a_job_requeued_or_preempted_mid_run_resumes_the_same_run_bit_identically_with_no_stale_error(
        tmp_path, empty_store, slurm_cluster, uninterrupted, stop):  # noqa: F811
    """`scontrol requeue` (SLURM sends SIGTERM, then starts the job again) or the preemption signal
    (`scancel --signal=USR2`: submitit's handler requeues the job itself) during epoch 2 of 4: the job
    continues the same MLflow run, which ends FINISHED, bit-identical to a run never stopped."""
    shutil.copy(empty_store, tmp_path / "m.db")
    uri = f"sqlite:///{tmp_path}/m.db"
    args = ("--multirun", *SMALL_NODE, *RESUMABLE, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun")
    sweep_proc = start_cli(*args, cwd=tmp_path)
    deadline = time.time() + 600
    # the job's own log: the store is left alone while the job creates its run
    while not any("epoch 1/4" in p.read_text() for p in tmp_path.glob("multirun/.submitit/*/*_log.out")):
        assert sweep_proc.poll() is None and time.time() < deadline, sweep_proc.stdout.read() if sweep_proc.poll() is not None else "timeout"
        time.sleep(0.2)
    client, _, (job,) = parent_and_children(uri)
    job_id = job.data.tags[tags.JOB_ID]
    if stop == "requeue":
        slurm_cluster.scontrol("requeue", job_id)
    else:
        slurm_cluster.scancel("--signal=USR2", job_id)
    # SLURM holds a requeued job back for a while (its begin time moves ~2 min on); start it now.
    # (it passes through REQUEUED and COMPLETING first; RUNNING again only if SLURM did not hold it)
    while not ("Restarts=1" in (record := slurm_cluster.scontrol("show", "job", job_id))
               and ("JobState=PENDING" in record or "JobState=RUNNING" in record)):
        assert time.time() < deadline and "JobState=COMPLETED" not in record, (record, job_logs(tmp_path))
        time.sleep(0.2)
    # Until the sweep ends, start the job again whenever it is found pending: the project's CI once saw the preempt
    # case wait out 600 s here after one such nudge (SLURM may move the begin time again while it finishes the requeue).
    finish = time.time() + 600
    while sweep_proc.poll() is None:
        assert time.time() < finish, (slurm_cluster.scontrol("show", "job", job_id), job_logs(tmp_path), slurm_cluster.log_tail())
        if "JobState=PENDING" in slurm_cluster.scontrol("show", "job", job_id):
            try:
                slurm_cluster.scontrol("update", f"JobId={job_id}", "StartTime=now")
            except subprocess.CalledProcessError:  # it started between the two calls
                pass
        time.sleep(5)
    out, _ = sweep_proc.communicate(timeout=60)
    assert sweep_proc.returncode == 0, out[-4000:]
    client, _, (resumed,) = parent_and_children(uri)
    assert resumed.info.run_id == job.info.run_id and resumed.info.status == "FINISHED"
    assert "Restarts=1" in slurm_cluster.scontrol("show", "job", job_id)  # SLURM ran the job twice, as one run
    assert "Bypassing sacct error" not in out, out[-4000:]
    assert tags.ERROR not in resumed.data.tags
    assert resumed.data.tags[tags.RESUME_PREVIOUS_ERROR]  # the stopped attempt's reason, kept apart
    assert_same_training(only_run(uninterrupted), (client, resumed), tmp_path, epochs=4)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_a_slurm_sweep_cancels_its_jobs_which_end_their_runs_killed_and_its_parent_killed(
        tmp_path, empty_store, slurm_cluster):  # noqa: F811
    """Before, the stopped sweep left its SLURM jobs queued and running.  SIGTERM once job 0 printed its
    first epoch (of 50; job 1 waits in the queue, one job at a time): both are cancelled, not requeued."""
    shutil.copy(empty_store, tmp_path / "m.db")
    uri = f"sqlite:///{tmp_path}/m.db"
    code, said = signal_after("epoch  1/50", signal.SIGTERM, "seglab", "--multirun", *SMALL_NODE, *SWEEP_TINY, "trainer.epochs=50",
                              "model.base_filters=2,4", ONE_THREAD, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun",
                              cwd=tmp_path, watch="multirun/.submitit/*/*_log.out")
    lines = [line for line in said.splitlines() if line.strip()]
    assert code == 143 and lines[-1].startswith("seglab: sweep stopped (SIGTERM): its jobs are ended and MLflow parent run "), said[-3000:]
    job_ids = sorted(p.name for p in (tmp_path / "multirun/.submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(job_ids) == 2, job_ids  # the array's two tasks, e.g. 7_0 and 7_1
    deadline = time.time() + 5
    while left := [j for j in slurm_cluster.squeue() if j in job_ids]:
        assert time.time() < deadline, (left, slurm_cluster.log_tail())
        time.sleep(0.2)
    for job_id in job_ids:  # SLURM's own record: cancelled, never requeued (a requeue is USR2's, or scontrol's)
        record = slurm_cluster.scontrol("show", "job", job_id)
        assert "JobState=CANCELLED" in record and "Restarts=0" in record, record
    _, parent, children = parent_and_children(uri)
    assert parent.info.status == "KILLED" and parent.data.tags[tags.KILLED_REASON].startswith("the sweep was stopped (SIGTERM)")
    assert children and {c.info.status for c in children} <= {"KILLED", "FINISHED"}, [(c.info.run_name, c.info.status) for c in children]
    stopped = children[0]  # job 0, in epoch 1 of 50: its own process ended its run, on scancel's SIGTERM
    assert stopped.info.status == "KILLED" and stopped.data.tags[tags.ERROR].startswith("terminated (SIGTERM)"), stopped.data.tags


def test_sigterm_during_a_slurm_submission_comes_once_it_ended_so_its_job_ids_are_kept():
    """Raised inside, SIGTERM would cut sbatch short: a job could be queued whose id the sweep never kept."""
    from seglab.engine import slurm

    came = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: came.append("handled"))
    try:
        with slurm._signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            came.append("submitted")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert came == ["submitted", "handled"]


def job_logs(tmp_path) -> str:
    return "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("multirun/.submitit/*/*_log.*")))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_two_task_srun_trains_one_model_from_slurms_environment(tmp_path, slurm_cluster):  # noqa: F811
    """No TF_CONFIG: each task builds the cluster from SLURM_PROCID, the step's task count and node list
    (seglab.engine.distribute.slurm_cluster); the command docs/performance.md gives."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    done = subprocess.run(
        ["srun", "--ntasks=2", "--cpus-per-task=1", "--kill-on-bad-exit=1", f"--output={tmp_path}/worker%t.log",
         sys.executable, "-m", "seglab", *SAME_STEPS, "trainer.strategy=multi_worker",
         f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/worker${{oc.env:SLURM_PROCID}}"],
        cwd=tmp_path, env={**env, **ENV, **slurm_cluster.env()}, capture_output=True, text=True, timeout=720,
    )
    logs = [tmp_path / f"worker{i}.log" for i in (0, 1)]
    assert done.returncode == 0, done.stderr[-2000:] + "".join(p.read_text()[-3000:] for p in logs if p.exists())
    client, run = the_run(uri)
    assert run.info.status == "FINISHED" and run.data.tags["replicas"] == "2"
    loss = histories(client, run)["train_loss"]
    assert loss[1] < loss[0], loss
    assert_replicas_are_the_chiefs_checkpoint(tmp_path / "worker0/checkpoints/last.state.npz", logs)

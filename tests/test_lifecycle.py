"""A run's lifecycle (seglab.engine.lifecycle): the run key, owner liveness, and what a resume refuses or records; fast checks
without training (the kills of real trainings are in test_resume.py)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from seglab.engine import checkpoint, claim, lifecycle
from tests.conftest import ROOT, build_model, dead_pid


def test_run_key_ignores_length_outputs_and_logging_but_not_what_is_learned(compose_cfg):
    key = lifecycle.run_key(compose_cfg())
    same = ("trainer.epochs=3", "trainer.resume=never", "trainer.mask_samples=0", "trainer.checkpoint_dir=/tmp/x",
            "trainer.checkpoint_every=5", "tracking.uri=sqlite:///other.db", "tracking.experiment=x", "data.cache=null")
    for override in same:
        assert lifecycle.run_key(compose_cfg(override)) == key, override
    for override in ("optimizer.learning_rate=0.01", "seed=1", "model.depth=3", "trainer.batch_size=16", "loss=dice",
                     "data.source.train_size=10", "trainer.jit_compile=true"):
        assert lifecycle.run_key(compose_cfg(override)) != key, override


def own_tags(**changes) -> dict[str, str]:
    return {**claim.owner_tags(), **changes}


def test_owner_alive_by_pid_on_this_host_and_by_heartbeat_on_another():
    parent = os.getppid()  # alive, started when it was
    alive_here = own_tags(**{"seglab.pid": str(parent), "seglab.pid_start": claim.process_start(parent)})
    assert claim.owner_alive(alive_here, timeout_s=60)
    assert not claim.owner_alive({**alive_here, "seglab.pid_start": "1"}, timeout_s=60)  # pid reused by another process
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not claim.owner_alive(own_tags(**{"seglab.pid": done.stdout.strip()}), timeout_s=60)
    elsewhere = {"seglab.host": socket.gethostname() + "-other", "seglab.pid": "1"}
    assert claim.owner_alive({**elsewhere, "seglab.heartbeat": str(int(time.time()) - 30)}, timeout_s=60)
    assert not claim.owner_alive({**elsewhere, "seglab.heartbeat": str(int(time.time()) - 90)}, timeout_s=60)


def test_a_requeued_job_takes_the_run_of_its_own_job_id_for_dead(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    tags = {"seglab.host": "node7", "seglab.pid": "1", "seglab.heartbeat": str(int(time.time())), "seglab.job_id": "4242"}
    assert not claim.owner_alive(tags, timeout_s=3600)
    assert claim.owner_alive({**tags, "seglab.job_id": "4243"}, timeout_s=3600)


def compiled(optimizer=None, **kwargs):
    model = build_model("unet", 2, 16, **{"base_filters": 2, "depth": 1, "dropout": 0.0, **kwargs})
    model.compile(optimizer or keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    return model


def test_a_checkpoint_of_another_architecture_is_refused_before_anything_changes(tmp_path):
    checkpoint.save_state(tmp_path / "s.npz", compiled(), checkpoint.TrainingState(epoch=1, best=0.5, best_epoch=0))
    other = compiled(base_filters=3)
    before = [w.copy() for w in other.get_weights()]
    with pytest.raises(checkpoint.ArchitectureMismatch, match="another architecture.*first difference.*trainer.resume=never"):
        checkpoint.load_state(tmp_path / "s.npz", other)
    for a, b in zip(before, other.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert checkpoint.load_state(tmp_path / "s.npz", compiled()) == checkpoint.TrainingState(1, 0.5, 0)


@pytest.mark.parametrize("saved,loaded,named", [
    (lambda: keras.optimizers.Adam(1e-2), lambda: keras.optimizers.Adam(1e-2, use_ema=True), "optimizer.ema"),
    (lambda: keras.optimizers.SGD(1e-2, momentum=0.9), lambda: keras.optimizers.SGD(1e-2), "optimizer.momentum"),
    (lambda: keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2), lambda: keras.optimizers.Adam(1e-2),
     "trainer.gradient_accumulation_steps"),
], ids=["ema", "momentum", "accumulation"])
def test_a_checkpoint_of_another_optimizer_setting_names_the_option(tmp_path, saved, loaded, named):
    """Issue 32: a resume whose optimizer option adds or drops variables is refused naming the option, not as
    "another architecture"; the model is left as it was."""
    checkpoint.save_state(tmp_path / "s.npz", compiled(saved()), checkpoint.TrainingState(epoch=1, best=0.5, best_epoch=0))
    other = compiled(loaded())
    before = [w.copy() for w in other.get_weights()]
    with pytest.raises(checkpoint.ArchitectureMismatch, match=rf"was saved with {re.escape(named)} set otherwise: .*trainer.resume=never"):
        checkpoint.load_state(tmp_path / "s.npz", other)
    for a, b in zip(before, other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_of_another_optimizer_is_not_blamed_on_an_option(tmp_path):
    checkpoint.save_state(tmp_path / "s.npz", compiled(), checkpoint.TrainingState(epoch=1, best=0.5, best_epoch=0))
    with pytest.raises(checkpoint.ArchitectureMismatch, match="another architecture.*first difference"):
        checkpoint.load_state(tmp_path / "s.npz", compiled(keras.optimizers.SGD(1e-2, momentum=0.9)))


def test_a_resume_turning_ema_on_is_refused_from_the_params_naming_it(compose_cfg):
    """optimizer.ema makes optimizer variables: changed on resume, it is named before any model is built."""
    from omegaconf import OmegaConf

    from seglab.tracking.params import as_text, flatten

    run_id = "0" * 32
    before = as_text(flatten(OmegaConf.to_container(compose_cfg(), resolve=True)))
    found = lifecycle.Plan(run_id, status="KILLED", previous_params=before)
    with pytest.raises(lifecycle.OtherArchitecture, match=r"\(optimizer\.ema=False -> True\).*set them back: optimizer\.ema=False"):
        lifecycle.refuse_other_architecture(found, compose_cfg("optimizer.ema=true", f"trainer.resume={run_id}"))
    lifecycle.refuse_other_architecture(found, compose_cfg("optimizer.learning_rate=0.01", f"trainer.resume={run_id}"))


def test_a_resumed_run_records_changed_params_as_a_tag_and_never_logs_a_step_twice(tmp_path):
    from seglab import tracking
    from seglab.engine.owner import RunOwner
    from seglab.tracking import resumable

    uri = f"sqlite:///{tmp_path}/m.db"
    with RunOwner(tracking.Run(uri, "e", "r", {})) as first:
        first.log_params({"trainer.epochs": 2, "model.depth": 2})
        first.log_epoch({"val_loss": 1.0}, 0)
        first.log_epoch({"val_loss": 0.9}, 1)
    with RunOwner(tracking.Run(uri, "e", "r", {}), continues=resumable.get_run(uri, first.run_id)) as again:
        again.log_params({"trainer.epochs": 4, "model.depth": 2, "trainer.resume": first.run_id})
        again.log_epoch({"val_loss": 0.5, "val_mean_iou": 0.3}, 1)  # a redone epoch
        again.log_epoch({"val_loss": 0.8}, 2)
    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.data.tags["seglab.resume.changed"] == "trainer.epochs: 2 -> 4"
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["trainer.resume"] == first.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "val_loss")] == [(0, 1.0), (1, 0.9), (2, 0.8)]
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "val_mean_iou")] == [(1, 0.3)]
    assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.params["seglab.claim.1"].split(":")[1] == str(os.getpid())  # the owner claimed the run it reopened


UPLOADER = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from seglab import tracking
    uri, work = sys.argv[1], Path(sys.argv[2])
    payload = np.random.default_rng(0).integers(0, 2**31, 8_000_000, dtype=np.int64)   # 64 MB
    with tracking.Run(uri, "e", "r", {}) as run:
        for epoch in range(1, 1000):
            state = work / "last.state.npz"
            np.savez(state, epoch=np.asarray(epoch), payload=payload + epoch)
            run.log_checkpoint([state], epoch)
""")


def test_sigkill_during_checkpoint_writes_and_uploads_leaves_a_complete_earlier_upload(tmp_path):
    """A real process uploading large checkpoints, killed with SIGKILL at once after its third
    upload starts (most of its time goes into writing and uploading): the store still names a
    complete checkpoint, and it is what a resume downloads."""
    uri, work = f"sqlite:///{tmp_path}/m.db", tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", UPLOADER, uri, str(work)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "mlruns").glob("*/*/artifacts/resume/epoch-0003")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert run.info.status == "RUNNING"
    epoch = int(run.data.tags["seglab.checkpoint_epoch"])
    path = lifecycle.restore_files(uri, run.info.run_id, run.data.tags, tmp_path / "none", tmp_path / "restored")
    with np.load(path) as saved:
        assert int(saved["epoch"]) == epoch >= 2
        expected = np.random.default_rng(0).integers(0, 2**31, 8_000_000, dtype=np.int64) + epoch
        np.testing.assert_array_equal(saved["payload"], expected)


def _snapshot(client: MlflowClient, run_id: str) -> dict:
    """Everything a command could change on a run: status, params, metrics (every step), tags, artifacts."""
    run = client.get_run(run_id)
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}
    return {"status": run.info.status, "end": run.info.end_time, "name": run.info.run_name, "params": run.data.params,
            "metrics": history, "tags": run.data.tags, "artifacts": _artifacts(client, run_id)}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[tuple[str, int | None]]:
    """Every artifact file of the run, with its size (config.yaml rewritten with another config differs)."""
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(_artifacts(client, run_id, item.path) if item.is_dir else [(item.path, item.file_size)])
    return found


@pytest.mark.slow  # two runs of the command line (TensorFlow loads before the refusal)
def test_resume_refuses_an_evaluation_run_and_a_sweep_parent_naming_the_id_to_use_and_writes_nothing(tmp_path):
    from seglab.tracking import tags
    from tests.conftest import TINY, run_cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())

    def finished_run(run_tags: dict[str, str]) -> str:
        run_id = client.create_run(experiment, tags=run_tags).info.run_id
        client.log_param(run_id, "p", "1")
        client.log_metric(run_id, "val_mean_iou", 0.5, step=0)
        client.log_text(run_id, "x", "summary.md")
        client.set_terminated(run_id, "FINISHED")
        return run_id

    training = finished_run({})
    evaluation = finished_run({tags.SPLIT: "val", tags.TRAINING_RUN: training, tags.MODEL_URI: f"runs:/{training}/model"})
    parent = finished_run({tags.SWEEP: tags.SWEEP_PARENT})
    deleted = finished_run({})  # deleted in the UI (issue 32: MLflow's "must be in the 'active' state" traceback)
    client.delete_run(deleted)
    before = {run_id: _snapshot(client, run_id) for run_id in (training, evaluation, parent, deleted)}
    for refused, names in ((evaluation, ["is an evaluation run", f"trainer.resume={training}"]),
                           (parent, ["is a sweep's parent run", "trainer.resume=auto", f"seglab.report {parent}"]),
                           (deleted, [f"run {deleted} is deleted", f"mlflow runs restore --run-id {deleted}",
                                      "trainer.resume=never"])):
        done = run_cli(*TINY, f"tracking.uri={uri}", "tracking.experiment=e", f"trainer.resume={refused}", cwd=tmp_path, check=False)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2 and last.startswith(f"seglab: trainer.resume={refused}"), done.stderr[-3000:]
        assert "Traceback" not in done.stderr and all(name in last for name in names), last
    assert {run_id: _snapshot(client, run_id) for run_id in before} == before
    assert len(client.search_runs([experiment])) == 3  # and no run was started instead (the deleted one is not listed)


def test_a_state_file_names_its_run_and_a_directory_of_another_run_is_refused(tmp_path):
    model = compiled()
    checkpoint.save_state(tmp_path / checkpoint.STATE_FILE, model, checkpoint.TrainingState(1, 0.5, 0, run_id="abc"))
    assert checkpoint.saved_run_id(tmp_path / checkpoint.STATE_FILE) == "abc"
    assert checkpoint.load_state(tmp_path / checkpoint.STATE_FILE, model).run_id == "abc"
    lifecycle.refuse_other_owner(tmp_path, "abc")  # its own directory
    lifecycle.refuse_other_owner(tmp_path / "empty", None)
    owned = f"checkpoint_dir={tmp_path} holds the checkpoint of run abc.*trainer.resume=abc"
    with pytest.raises(lifecycle.CheckpointOwned, match=owned):
        lifecycle.refuse_other_owner(tmp_path, None)
    with pytest.raises(lifecycle.CheckpointOwned, match="^trainer.resume=xyz: .* run abc, not of this run"):
        lifecycle.refuse_other_owner(tmp_path, "xyz")
    old = tmp_path / "old"  # a state file written before state files named their run: the run's own
    old.mkdir()
    checkpoint.save_state(old / checkpoint.STATE_FILE, model, checkpoint.TrainingState(1, 0.5, 0))
    assert checkpoint.saved_run_id(old / checkpoint.STATE_FILE) is None
    lifecycle.refuse_other_owner(old, "xyz")


def _refused(*args: str, cwd, names: list[str]) -> None:
    from tests.conftest import TINY, run_cli

    done = run_cli(*TINY, *args, cwd=cwd, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert all(name in lines[-1] for name in names), lines[-1]


@pytest.mark.slow  # one tiny training, then four refused commands (TensorFlow loads before each refusal)
def test_refused_commands_leave_a_finished_run_and_its_checkpoint_directory_as_they_were(tmp_path):
    """Issue 21: a new run given a directory holding another run's checkpoint, a resume with no
    epochs left, an evaluation of its model on other data, a
    resume from a directory another run has since written to: each refused in one line, the run's
    record and checkpoint unchanged, no run added."""
    from tests.conftest import TINY, run_cli

    uri, shared = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "shared"
    common = (f"tracking.uri={uri}", f"trainer.checkpoint_dir={shared}")  # the model logged: an empty resume logged it again
    run_cli(*TINY, *common, "trainer.epochs=1", cwd=tmp_path, timeout=900)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("seglab-shapes").experiment_id
    (first,) = client.search_runs([experiment])
    run_id, state = first.info.run_id, shared / checkpoint.STATE_FILE
    assert checkpoint.saved_run_id(state) == run_id
    before, state_bytes = _snapshot(client, run_id), state.read_bytes()

    _refused(*common, "trainer.epochs=1", "trainer.resume=never", cwd=tmp_path,
             names=[f"trainer.checkpoint_dir={shared}", f"checkpoint of run {run_id}", f"trainer.resume={run_id}"])
    _refused(*common, "trainer.epochs=1", f"trainer.resume={run_id}", cwd=tmp_path,
             names=[f"nothing left to train: run {run_id} already has 1 epochs", "trainer.epochs=M"])
    assert _snapshot(client, run_id) == before and state.read_bytes() == state_bytes

    # seglab.evaluate of its model on other data (both have 3 classes): refused before anything is logged
    done = subprocess.run([sys.executable, "-m", "seglab.evaluate", f"model_uri=runs:/{run_id}/model", "data=pets",
                           f"tracking.uri={uri}"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"run {run_id} was trained on data=shapes" in last and "add data=shapes" in last and "data=pets" in last, last
    assert _snapshot(client, run_id) == before and len(client.search_runs([experiment])) == 1

    other = client.create_run(experiment).info.run_id  # the directory then written to by another run
    with np.load(state) as saved:
        arrays = {**{k: saved[k] for k in saved.files}, checkpoint.RUN_ID: np.asarray(other)}
    np.savez(state, **arrays)
    before = _snapshot(client, run_id)
    _refused(*common, "trainer.epochs=2", f"trainer.resume={run_id}", cwd=tmp_path,
             names=[f"trainer.resume={run_id}", f"checkpoint of run {other}", f"trainer.resume={other}"])
    assert _snapshot(client, run_id) == before
    assert len(client.search_runs([experiment])) == 2


@pytest.mark.slow  # one tiny training, then two refused resumes (TensorFlow loads before the second one's refusal)
def test_a_resume_of_another_architecture_is_refused_and_changes_nothing_in_the_store(tmp_path):
    """Issue 21: a changed model setting is refused from the run's logged params, before the run reopens
    (one line, exit 2); a checkpoint that does not fit although the params
    agree (SGD without momentum has no momentum variables) is refused by the checkpoint's own shape check
    after the run reopened, and the run is put back as it was."""
    from tests.conftest import TINY, run_cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = (*TINY, f"tracking.uri={uri}", "tracking.log_model=false", "optimizer=sgd")
    run_cli(*common, "optimizer.momentum=0.0", cwd=tmp_path, timeout=900)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    run_id = run.info.run_id
    before = _snapshot(client, run_id)

    done = run_cli(*common, "optimizer.momentum=0.0", "trainer.epochs=3", f"trainer.resume={run_id}", "model.base_filters=6",
                   cwd=tmp_path, check=False)
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert last.startswith(f"seglab: trainer.resume={run_id}: run {run_id} trained another architecture"), last
    assert "model.base_filters=4 -> 6" in last and "trainer.resume=never" in last, last
    assert last.endswith("set them back: model.base_filters=4"), last
    assert _snapshot(client, run_id) == before

    done = run_cli(*common, "optimizer.momentum=0.5", "trainer.epochs=3", f"trainer.resume={run_id}", cwd=tmp_path,
                   check=False, timeout=900)
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "was saved with optimizer.momentum set otherwise" in last, last  # the option named (issue 32)
    after = _snapshot(client, run_id)
    # The resume had claimed the run (seglab.engine.claim) before the checkpoint could be tried: that write-once
    # param stays (MLflow deletes no param), naming who took the run; everything else is as it was.
    claimed = after["params"].pop("seglab.claim.1")
    assert claimed.split(":")[1] != str(os.getpid()) and after == before
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_an_artifact_store_that_does_not_answer_is_never_taken_for_a_deleted_checkpoint(tmp_path, monkeypatch):
    """The run's artifacts on an S3 endpoint that is down: restore_files neither says "gone" nor falls back to an
    older local copy; it raises the store's one line, and the owner puts the run back (resume_refused)."""
    from seglab.tracking.resumable import CheckpointUnavailable
    from tests.stores import fresh_store

    for key, value in {"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                       "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}.items():
        monkeypatch.setenv(key, value)
    fresh_store(tmp_path / "m.db")
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location="s3://bucket/a")).info.run_id
    local = tmp_path / "old" / "checkpoints"  # an older copy of epoch 1 on this machine
    checkpoint.save_state(local / checkpoint.STATE_FILE, compiled(), checkpoint.TrainingState(epoch=1, best=0.5, best_epoch=0,
                                                                                              run_id=run_id))
    tags = {"seglab.checkpoint": "checkpoints", "seglab.checkpoint_epoch": "3", "hydra.output_dir": str(tmp_path / "old")}
    with pytest.raises(CheckpointUnavailable, match=rf"could not list the checkpoint 'checkpoints' of run {run_id} .*again"):
        lifecycle.restore_files(uri, run_id, tags, Path("checkpoints"), tmp_path / "new" / "checkpoints")
    assert CheckpointUnavailable.resume_refused and not (tmp_path / "new" / "checkpoints").exists()


@pytest.mark.slow  # one tiny training, then a refused resume (TensorFlow loads before the refusal)
def test_a_resume_whose_checkpoint_was_deleted_everywhere_is_refused_and_the_finished_run_stays_as_it_was(tmp_path):
    """Issue 32: the run's checkpoints deleted from its artifacts (the MLflow UI, a clean-up) and from the
    machine: the resume says so in one line, exit 2, and the FINISHED run keeps its status, end and tags
    (it turned FAILED, its tags overwritten, with a traceback)."""
    from tests.conftest import TINY, run_cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli(*TINY, f"tracking.uri={uri}", "trainer.epochs=1", cwd=tmp_path, timeout=900)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    run_id = run.info.run_id
    uploaded = Path(run.info.artifact_uri.removeprefix("file://")) / run.data.tags["seglab.checkpoint"]
    assert (uploaded / checkpoint.STATE_FILE).exists()
    shutil.rmtree(uploaded)
    shutil.rmtree(tmp_path / "outputs")
    before = _snapshot(client, run_id)

    done = run_cli(*TINY, f"tracking.uri={uri}", "trainer.epochs=2", f"trainer.resume={run_id}", cwd=tmp_path,
                   check=False, timeout=900)
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"cannot continue run {run_id}: its checkpoint (epoch 1" in last and "trainer.resume=never" in last, last
    assert _snapshot(client, run_id) == before, "refused before the claim: nothing written"
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.parametrize("sig, how", [(signal.SIGTERM, "terminated (SIGTERM)"), (signal.SIGINT, "interrupted (Ctrl-C)")])
def test_a_signal_during_an_mlflow_write_comes_when_the_write_ends(tmp_path, sig, how):
    """Ctrl-C or SIGTERM while the run writes to MLflow: the write is finished, not cut in half, then the signal's
    exception comes; the run ends KILLED with the reason as its `error` tag."""
    import mlflow

    from seglab import errors, tracking
    from seglab.engine.owner import RunOwner

    uri = f"sqlite:///{tmp_path}/m.db"

    def write_signalled_halfway():
        mlflow.set_tag("first", "1")
        os.kill(os.getpid(), sig)  # its handler runs here, between the two halves of the write
        mlflow.set_tag("second", "2")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a worker may ignore Ctrl-C)
    try:
        with pytest.raises(errors.Interrupted, match=re.escape(how)):
            with RunOwner(tracking.Run(uri, "e", "r", {})) as run:
                run._log("a write", write_signalled_halfway)
                pytest.fail("the signal's exception did not come when the write ended")
    finally:
        signal.signal(signal.SIGINT, previous)
    found = MlflowClient(uri).get_run(run.run_id)
    assert found.info.status == "KILLED" and found.data.tags["error"] == how
    assert found.data.tags["first"] == "1" and found.data.tags["second"] == "2"


CLAIMER = textwrap.dedent("""
    import sys, time
    from seglab.engine import claim
    from seglab.tracking import resumable, tags
    uri, run_id, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    mine = claim.Claim.mine(1)
    resumable.get_run(uri, run_id)  # the store opened before the start line, as a command has it open
    time.sleep(max(0.0, at - time.time()))
    other = resumable.claim(uri, run_id, tags.claim(1), mine.value)
    print("won" if other is None else "lost to " + other)
""")


def test_of_processes_claiming_one_generation_of_a_run_at_once_exactly_one_wins(tmp_path):
    """The claim's primitive (seglab.engine.claim): four real processes log `seglab.claim.1` with their own
    value at the same instant; the store takes one, the others are told its value; the same value again is a no-op."""
    from seglab.tracking import resumable, tags

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    at = time.time() + 8
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, uri, run_id, str(at)], cwd=tmp_path, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    said = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in said]
    answers = sorted(out.strip() for out, _ in said)
    winner = client.get_run(run_id).data.params[tags.claim(1)]
    assert answers == ["lost to " + winner] * 3 + ["won"], answers
    assert resumable.claim(uri, run_id, tags.claim(1), winner) is None  # the same value again: a no-op
    assert resumable.claim(uri, run_id, tags.claim(1), "other") == winner


def test_take_refuses_a_run_a_live_process_holds_and_claims_one_whose_holder_is_dead(tmp_path):
    from seglab.tracking import resumable, tags

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = os.getppid()  # a live process on this host, not this one
    alive = {**claim.owner_tags(), tags.PID: str(parent), tags.PID_START: claim.process_start(parent)}
    run_id = client.create_run(client.create_experiment("e"), tags=alive).info.run_id
    with pytest.raises(claim.RunTaken, match=f"^trainer.resume=x: run {run_id} is RUNNING and held by pid {parent} on host"):
        claim.take(uri, resumable.get_run(uri, run_id), 60, "trainer.resume=x")
    assert tags.claim(1) not in client.get_run(run_id).data.params  # refused before claiming

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client.set_tag(run_id, tags.PID, done.stdout.strip())  # its owner is gone
    first = claim.take(uri, resumable.get_run(uri, run_id), 60, "trainer.resume=x")
    assert (first.generation, first.pid) == (1, str(os.getpid()))
    assert client.get_run(run_id).data.params[tags.claim(1)] == first.value
    # The claimant (this process, alive but not "another" one) has not reopened the run: a third process that
    # read the run now would find it held by the claim; a claim by a dead process is taken over as generation 2.
    record = resumable.get_run(uri, run_id)
    assert claim.latest(record.params) == first
    client.log_param(run_id, tags.claim(2), claim.Claim(2, socket.gethostname(), done.stdout.strip(), "-", time.time(), "t").value)
    assert claim.take(uri, resumable.get_run(uri, run_id), 60, "trainer.resume=x").generation == 3


FILLS_THE_DISK = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from seglab import errors, tracking
    from seglab.engine.owner import RunOwner
    uri, work = sys.argv[1], Path(sys.argv[2])
    big = work / "last.state.npz"
    big.write_bytes(b"x" * 12_000_000)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (6_000_000, 6_000_000))

    def train():
        with RunOwner(tracking.Run(uri, "e", "r", {})) as run:
            print(run.run_id, flush=True)
            run.log_text("small", "notes.txt")
            run.log_checkpoint([big], 1)

    errors.main(train, prog="seglab")
""")


def test_a_checkpoint_that_cannot_be_written_ends_the_run_failed_naming_the_file_and_exits_non_zero(tmp_path):
    """A full disk (EFBIG past RLIMIT_FSIZE, what a full disk's ENOSPC is to seglab) while a checkpoint is
    uploaded: not taken for a tracking server gone away (which training survives) but a lost file: the run ends
    FAILED with the reason, the command exits 2 with one line naming the file."""
    uri, work = f"sqlite:///{tmp_path}/m.db", tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", FILLS_THE_DISK, uri, str(work)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and "INFO mlflow" not in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.match(r"^seglab: could not write into \S+/artifacts while logging checkpoint last.state.npz of epoch 1 to run \w+: "
                    r"File too large; free space", lines[-1]), lines
    run = MlflowClient(uri).get_run(done.stdout.strip())
    assert run.info.status == "FAILED" and "File too large" in run.data.tags["error"]
    assert "seglab.checkpoint" not in run.data.tags  # no tag points at the half-written upload


FILLS_THE_DISK_WITH_THE_MODEL = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    import keras, numpy as np
    from seglab import errors, tracking
    from seglab.engine.owner import RunOwner
    uri = sys.argv[1]
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(20_000), keras.layers.Dense(2)])  # a 5 MB file

    def train():
        with RunOwner(tracking.Run(uri, "e", "r", {})) as run:
            print(run.run_id, flush=True)
            run.log_text("small", "notes.txt")
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as on a full disk
            limit = Path(uri.removeprefix("sqlite:///")).stat().st_size + 2_000_000  # the store itself may grow
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            run.log_model(model, np.zeros((1, 64), "float32"))

    errors.main(train, prog="seglab")
""")


def test_a_model_that_cannot_be_written_ends_the_run_and_the_logged_model_failed_and_leaves_no_half_file(tmp_path):
    """Issue 32: a full disk while the model is logged (EFBIG past RLIMIT_FSIZE) exited 0 with the run RUNNING and
    the logged model PENDING over a truncated file; now exit 2 in one line, the run FAILED, the logged model FAILED,
    and no file of it left in the artifacts."""
    from tests.stores import fresh_store

    fresh_store(tmp_path / "m.db")
    uri = f"sqlite:///{tmp_path}/m.db"
    done = subprocess.run([sys.executable, "-c", FILLS_THE_DISK_WITH_THE_MODEL, uri], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and "INFO mlflow" not in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.match(r"^seglab: could not write .* while logging the model to run \w+: File too large; free space", lines[-1]), lines
    client = MlflowClient(uri)
    run = client.get_run(done.stdout.strip())
    assert run.info.status == "FAILED" and "File too large" in run.data.tags["error"]
    (logged,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert logged.status.name == "FAILED", logged.status
    files = sorted(p.relative_to(tmp_path / "mlruns").as_posix() for p in (tmp_path / "mlruns").rglob("*") if p.is_file())
    assert files == [f"{run.info.experiment_id}/{run.info.run_id}/artifacts/notes.txt"], files


LOGS_WHEN_TOLD = textwrap.dedent("""
    import sys
    from seglab import errors, tracking
    from seglab.engine.owner import RunOwner

    def log():
        with RunOwner(tracking.Run(sys.argv[1], "e", "r", {})) as run:
            print(run.run_id, flush=True)
            sys.stdin.readline()  # the test holds the store locked now
            if sys.argv[2] == "log":
                run.log_metrics({"m": 1.0})

    errors.main(log, prog="seglab")
""")
SQLITE_BUSY_TIMEOUT_S = 20  # MLflow's `PRAGMA busy_timeout = 20000` on every session of a SQLite store


@pytest.mark.parametrize("first_write", ["log", "end"])
def test_a_store_locked_past_the_busy_timeout_is_one_line_and_exit_2_not_a_server_gone(tmp_path, first_write):
    """Another program holds the SQLite store locked (BEGIN EXCLUSIVE) longer than MLflow waits: the write fails with
    `database is locked`.  Before, that was taken for a tracking server gone away: logging was skipped and the command
    exited 0.  Now it exits 2 with one line naming the file and the fix.  A metric refused: the lock is gone by the
    end, so the run is ended FAILED with the reason.  The end refused: the run is left RUNNING, and the line says so."""
    from tests.stores import fresh_store

    path = fresh_store(tmp_path / "m.db")
    uri = f"sqlite:///{path}"
    proc = subprocess.Popen([sys.executable, "-c", LOGS_WHEN_TOLD, uri, first_write], cwd=tmp_path, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    run_id = proc.stdout.readline().strip()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(SQLITE_BUSY_TIMEOUT_S + 10)  # the write gives up at 20 s; the end, which waits 20 s too, gets through
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip() and "INFO mlflow" not in line]
    doing, now = {"log": (f"logging metrics to run {run_id}", "is ended FAILED"),
                  "end": (f"ending run {run_id} as FINISHED", "is left RUNNING in it (the store could not be written to end it)")
                  }[first_write]
    assert proc.returncode == 2 and lines == [
        f"seglab: tracking.uri={uri}: the store file {path} could not be written while {doing} (database is locked); "
        f"stop the program that holds {path} locked, then run the command again; run {run_id} {now}"], stderr[-3000:]
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == now.split()[2] and "m" not in run.data.metrics
    assert ("database is locked" in run.data.tags["error"]) if first_write == "log" else "error" not in run.data.tags


def _fill(disk) -> None:
    with open(disk / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC, err


def _count(path, sql: str) -> int:
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            return db.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # locked by the training's write of the moment
        return 0


@pytest.mark.slow  # a tiny training, then its resume
def test_a_store_whose_disk_fills_mid_training_exits_2_in_one_line_and_the_run_resumes_once_space_is_freed(tmp_path):
    """The SQLite store on a small tmpfs that another program fills once the training logged its first epoch: the
    next write to the store fails with `database or disk is full`.  Before, that was taken for a tracking server gone
    away: training went on, the command exited 0, the run stayed RUNNING.  Now the command exits 2 with one line naming
    the file and the fix; the full store cannot take FAILED either, and the line says so; freed, the run resumes."""
    from tests.conftest import TINY, run_cli, start_module
    from tests.stores import fresh_store

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        path = fresh_store(disk / "m.db")
        uri, args = f"sqlite:///{path}", (*TINY, "trainer.epochs=3")
        proc = start_module("seglab", *args, f"tracking.uri={uri}", cwd=tmp_path)
        deadline = time.time() + 600
        while _count(path, "SELECT count(*) FROM metrics WHERE step = 0") == 0:
            assert proc.poll() is None and time.time() < deadline, "the training ended before its store was filled"
            time.sleep(0.1)
        _fill(disk)
        output = "".join(proc.stdout)
        proc.wait(timeout=600)
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            ((run_id, status),) = db.execute("SELECT run_uuid, status FROM runs").fetchall()
        lines = [line for line in output.splitlines() if line.strip()]
        assert proc.returncode == 2 and "Traceback" not in output and "MLflow logging failed" not in output, output[-3000:]
        assert re.fullmatch(
            rf"seglab: tracking.uri={uri}: the store file {path} could not be written while logging .+ to run {run_id} "
            rf"\(database or disk is full\); free space on the disk of {disk}, then resume with trainer.resume={run_id}; "
            rf"run {run_id} is left RUNNING in it \(the store could not be written to end it\)", lines[-1]), lines[-1]
        assert status == "RUNNING"
        (disk / "filler").unlink()
        run_cli(*args, f"tracking.uri={uri}", f"trainer.resume={run_id}", cwd=tmp_path, timeout=600)
        run = MlflowClient(uri).get_run(run_id)
        steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_loss")]
        assert run.info.status == "FINISHED" and sorted(steps) == [0, 1, 2], steps  # each epoch once
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.slow  # a tiny training, then two evaluations
def test_an_evaluation_killed_with_sigkill_is_ended_killed_by_the_next_evaluation_naming_why(tmp_path):
    """`kill -9` during seglab.evaluate leaves its run RUNNING (no process is left to end it); the next
    evaluation in that experiment finds its process gone and ends it KILLED with the reason."""
    from tests.conftest import TINY, run_cli, run_module, start_module

    uri = f"sqlite:///{tmp_path}/m.db"
    run_cli(*TINY, f"tracking.uri={uri}", "trainer.epochs=1", cwd=tmp_path, timeout=900)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("seglab-shapes").experiment_id
    (training,) = client.search_runs([experiment])
    args = (f"model_uri=runs:/{training.info.run_id}/model", f"tracking.uri={uri}", "data.source.test_size=600")
    proc = start_module("seglab.evaluate", *args, cwd=tmp_path)
    deadline, where = time.time() + 300, "tags.`seglab.split` = 'test'"
    while not client.search_runs([experiment], where):
        assert proc.poll() is None and time.time() < deadline, "the evaluation ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed,) = client.search_runs([experiment], where)
    assert killed.info.status == "RUNNING" and killed.data.tags["seglab.pid"]

    done = run_module("seglab.evaluate", *args, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    again = client.get_run(killed.info.run_id)
    assert again.info.status == "KILLED", again.info.status
    reason = again.data.tags["seglab.killed_reason"]
    assert f"pid {killed.data.tags['seglab.pid']}" in reason and "is gone; found by seglab.evaluate" in reason, reason
    assert sorted(r.info.status for r in client.search_runs([experiment], where)) == ["FINISHED", "KILLED"]


TAKEN_OVER = textwrap.dedent("""
    import sys
    from mlflow import MlflowClient
    from seglab import errors, tracking
    from seglab.engine import claim
    from seglab.engine.owner import RunOwner
    from seglab.tracking import tags
    uri = sys.argv[1]

    def train():
        with RunOwner(tracking.Run(uri, "e", "r", {**claim.owner_tags(), tags.RUN_KEY: "k"})) as run:
            print(run.run_id, flush=True)
            run.log_epoch({"loss": 1.0}, 0)
            # Another host took the run for dead (its heartbeat looked too old) and claimed it, as claim.take logs it:
            other = claim.Claim(1, "gpu7", "4242", "-", 1.0, "t")
            MlflowClient(uri).log_param(run.run_id, tags.claim(1), other.value)
            run.log_epoch({"loss": 0.5}, 1)
            run.log_text("not written", "late.txt")

    errors.main(train, prog="seglab")
""")


def test_a_holder_whose_claim_was_taken_over_stops_at_the_next_epoch_and_writes_nothing_more(tmp_path):
    """The holder reads the run's newest claim before each epoch's metrics (seglab.engine.owner): once another
    process claimed the run, it exits 2 with one line naming that process and leaves the run to it: no
    metric of that epoch, no artifact, no error tag, and not its status (still RUNNING, the new holder's)."""
    uri = f"sqlite:///{tmp_path}/m.db"
    done = subprocess.run([sys.executable, "-c", TAKEN_OVER, uri], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and "INFO mlflow" not in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.match(r"^seglab: run \w+ was claimed by pid 4242 on host gpu7 \(claim 1\) while this process \(it created "
                    r"the run\) trained it, .*; this process stops and writes nothing more to it$", lines[-1]), lines
    client = MlflowClient(uri)
    run = client.get_run(done.stdout.strip())
    assert run.info.status == "RUNNING" and run.info.end_time is None and "error" not in run.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(0, 1.0)]
    assert client.list_artifacts(run.info.run_id) == []


def test_report_ends_killed_the_runs_of_its_sweep_whose_process_is_gone(tmp_path):
    """`seglab.report` touches a sweep's runs: those RUNNING with their process gone (a sweep killed with -9) are
    ended KILLED naming why, the parent included; a run whose process lives is left RUNNING."""
    from seglab.tracking import sweeps, tags
    from tests.conftest import run_module

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    dead = {**claim.owner_tags(), tags.PID: dead_pid()}
    alive = {**claim.owner_tags(), tags.PID: str(os.getppid()), tags.PID_START: claim.process_start(os.getppid())}
    parent = sweeps.start_parent_run(uri, "e", "a-sweep", {tags.SWEEP: tags.SWEEP_PARENT, **dead}, {})
    experiment = client.get_experiment_by_name("e").experiment_id
    jobs = {which: client.create_run(experiment, run_name=which, tags={**owner, tags.PARENT_RUN: parent,
                                                                      tags.HYDRA_JOB_NUM: str(job)}).info.run_id
            for job, (which, owner) in enumerate([("dead", dead), ("alive", alive)])}
    done = run_module("seglab.report", "a-sweep", "--tracking-uri", uri, "--no-log", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for run_id in (parent, jobs["dead"]):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", run_id
        assert run.data.tags["seglab.killed_reason"] == f"its process (pid {dead[tags.PID]} on host {socket.gethostname()}) is gone; found by seglab.report"
    assert client.get_run(jobs["alive"]).info.status == "RUNNING"
    assert "KILLED" in done.stdout and "RUNNING" in done.stdout, done.stdout  # the table shows them as they are now


def test_bench_ends_killed_a_bench_run_whose_process_is_gone_before_it_logs(tmp_path):
    """`seglab.bench` logs its report to `seglab-bench` through the run's owner: a bench run left RUNNING by a
    bench killed with -9 is ended KILLED first, and the new run carries its owner and ends FINISHED."""
    from seglab.cli import bench
    from seglab.tracking import tags

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    killed = client.create_run(client.create_experiment(bench.BENCH_EXPERIMENT),
                               tags={**claim.owner_tags(), tags.PID: dead_pid()}).info.run_id
    report = {"overrides": [], "options": {"steps": 2}, "results": [], "startup": {}}
    logged = bench.log_to_mlflow(report, uri, timeout_s=60)
    before = client.get_run(killed)
    assert before.info.status == "KILLED" and before.data.tags["seglab.killed_reason"].endswith("is gone; found by seglab.bench")
    after = client.get_run(logged)
    assert after.info.status == "FINISHED" and after.data.tags[tags.PID] == str(os.getpid())


def test_resuming_a_run_id_from_a_store_that_does_not_exist_is_refused_without_creating_it(tmp_path):
    from tests.conftest import TINY, run_cli

    done = run_cli(*TINY, f"trainer.resume={'a' * 32}", f"tracking.uri=sqlite:///{tmp_path}/m.db", cwd=tmp_path, check=False)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and f"trainer.resume={'a' * 32}: tracking.uri=sqlite:///{tmp_path}/m.db does not exist yet" in last, last
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("where", ["scoring", "store write"])
def test_a_ctrl_c_python_swallowed_outside_training_stops_the_command_at_the_next_scoring_batch_or_write(tmp_path, where):
    """Ctrl-C during `seglab.evaluate` (or a training's test scoring, or export) whose exception Python swallowed
    (raised in a `__del__`: seglab.util.signals' hook keeps it) stopped nothing: only training's batches raised it
    again, so the command scored and logged to the end and exited 0 with the run FINISHED. Now the next scoring batch
    stops it, or the end of the next store write (which is whole): the run ends KILLED, the command exits 130."""
    from seglab import errors, tracking
    from seglab.engine import per_image
    from seglab.engine.owner import RunOwner

    class Dying:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here; Python only reports it

    uri = f"sqlite:///{tmp_path}/m.db"
    batches = [(np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 8, 8), np.int32))] * 3
    scored = []

    def logits(images):
        scored.append(len(images))
        return np.zeros((len(images), 8, 8, 2), np.float32)

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a console (pytest may ignore it)
    try:
        with pytest.raises(errors.Interrupted, match="interrupted") as stopped:
            with RunOwner(tracking.Run(uri, "e", "eval", {})) as run:
                Dying()
                if where == "scoring":
                    per_image.score_images(None, batches, 2, logits=logits)
                else:
                    run.log_metrics({"test_mean_iou": 0.5})
                run.log_metrics({"after": 1.0})  # never reached
    finally:
        signal.signal(signal.SIGINT, previous_int)
    assert stopped.value.exit_code == errors.EXIT_INTERRUPTED
    after = MlflowClient(uri).get_run(run.run_id)
    assert after.info.status == "KILLED" and "after" not in after.data.metrics
    assert scored == [] if where == "scoring" else after.data.metrics == {"test_mean_iou": 0.5}  # the write is whole


def test_sigterm_whose_exception_a_library_turns_into_another_still_ends_the_run_killed(tmp_path):
    """TensorFlow's autograph context asserts its stack on the way out, so a Terminated raised inside a traced call
    reached the run's owner as AssertionError and the run ended FAILED (a sweep job in tests/test_sweeps.py, now and then)."""
    from seglab import errors, tracking
    from seglab.engine.owner import RunOwner
    from seglab.util import signals

    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(errors.Interrupted, match="terminated"):
        with RunOwner(tracking.Run(uri, "e", "r", {})) as run:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler raises here
            except signals.Terminated:
                raise AssertionError() from None  # as autograph's ControlStatusCtx.__exit__ does
    assert MlflowClient(uri).get_run(run.run_id).info.status == "KILLED"
    # The SIGTERM ended that run only: training in the same process later (a test, a sweep's next job) is not stopped.
    assert not signals.terminated()
    signals.raise_if_swallowed()

"""trainer.strategy: mirrored over two logical CPU devices and multi_worker with two local processes
give the single-device result (up to float rounding), and MLflow gets one run, from the chief."""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from seglab.config import schema
from seglab.engine import checkpoint, distribute
from seglab.tracking import tags
from tests.conftest import NOISE, ROOT, TINY, run_cli

# Dropout, augmentation and shuffling off: a replica draws its own dropout masks, and tf.data's
# per-epoch random streams (shuffle order, `Dataset.random` augmentation seeds) differ once the dataset
# is rewritten for distribution; everything else is the same data, initial weights and updates.
# Four epochs: a worker killed after the first leaves three to resume (time for the test to kill it mid-run).
EPOCHS = 4
SAME_STEPS = (*TINY, "model.batch_norm=false", "model.dropout=0", "data.augment.hflip=false", "data.shuffle_buffer=1",
              "tracking.log_model=false", f"trainer.epochs={EPOCHS}")
# Measured: 2 epochs of 6 steps, weights differ by at most ~1e-6 (float sums in another order).  Without
# batch norm: its statistics, synchronised over the replicas (models/encoders.batch_norm), divide by a
# variance computed in another order too, which moves a few pixels' argmax at this chance-level start
# (metrics ~5e-4 apart); unsynchronised, each replica's half batch moved train_loss by 7e-3.
WEIGHTS_ATOL, METRICS_RTOL = 1e-4, 1e-4
# Replicas are logical CPUs (tests/split_cpu.py): GPUs hidden, so a GPU machine runs the same test.
ENV = {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def test_unknown_strategy_is_rejected_naming_the_key(compose_cfg):
    with pytest.raises(schema.ConfigError, match=r"trainer.strategy='horovod' is not allowed: choose one of auto, "):
        schema.validate(compose_cfg("trainer.strategy=horovod"))


def test_multi_worker_without_tf_config_fails_before_tensorflow(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    done = subprocess.run([sys.executable, "-m", "seglab", "trainer.strategy=multi_worker"], cwd=tmp_path,
                          env={**env, **ENV}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "trainer.strategy=multi_worker needs TF_CONFIG" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("tf_config,chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
])
def test_the_chief_is_the_chief_task_or_else_worker_0(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert distribute.is_chief() is chief
    assert distribute.resolve("auto") == ("multi_worker" if tf_config else "auto")


def test_a_tf_config_of_a_cluster_must_be_asked_for_with_multi_worker(monkeypatch):
    """Issue 32: a TF_CONFIG left in the environment made `auto` wait for the other workers forever."""
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}))
    for name in ("auto", "mirrored", "one_device"):
        with pytest.raises(distribute.DistributeError, match=rf"names a cluster of 2 tasks, but trainer.strategy={name}: .*"
                                                             "add trainer.strategy=multi_worker .* or unset TF_CONFIG"):
            distribute.check(name)
    distribute.check("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"]}, "task": {"type": "chief", "index": 0}}))
    distribute.check("auto")  # a cluster of one (as some platforms set it) waits for nobody


def test_a_bad_tf_config_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(distribute.DistributeError, match="task index 3 is not in the cluster's 1 'worker' tasks"):
        distribute.check("multi_worker")


@pytest.mark.parametrize("settings,named", [
    (("jit_compile", True), "trainer.jit_compile=true is not supported with a multi-worker strategy yet "
                            "(trainer.strategy=multi_worker): add trainer.jit_compile=false."),
    (("steps_per_execution", 8), "trainer.steps_per_execution=8 is not supported"),
])
def test_what_the_multi_worker_loop_does_not_run_is_refused_before_tensorflow(monkeypatch, settings, named):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}))
    trainer = {"jit_compile": False, "steps_per_execution": 1, settings[0]: settings[1]}
    with pytest.raises(distribute.DistributeError, match=re.escape(named)):
        distribute.check("multi_worker", trainer["jit_compile"], trainer["steps_per_execution"])
    distribute.check("multi_worker")  # trainer.resume is not refused: the chief resumes, the workers take its state
    monkeypatch.delenv("TF_CONFIG")  # mirrored with a cluster's TF_CONFIG is refused (test_a_tf_config_of_a_cluster_...)
    distribute.check("mirrored", trainer["jit_compile"], trainer["steps_per_execution"])  # fit runs those


def test_an_srun_step_of_several_tasks_is_a_cluster_of_one_worker_per_task():
    env = {"SLURM_STEP_NUM_TASKS": "5", "SLURM_PROCID": "3", "SLURM_JOB_ID": "5007", "SLURM_STEP_NODELIST": "a1,b2,c3",
           "SLURM_STEP_TASKS_PER_NODE": "2(x2),1"}
    port = distribute.SLURM_PORT_BASE + 7 * distribute.SLURM_PORTS_PER_NODE
    assert distribute.slurm_cluster(env) == {
        "cluster": {"worker": [f"a1:{port}", f"a1:{port + 1}", f"b2:{port}", f"b2:{port + 1}", f"c3:{port}"]},
        "task": {"type": "worker", "index": 3}}
    # One task, or a batch script outside srun (no step variables): no cluster.
    assert distribute.slurm_cluster({**env, "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert distribute.slurm_cluster({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": "1"}) is None


def the_run(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def histories(client, run):
    keys = ("train_loss", "train_pixel_accuracy", "val_loss", "val_mean_iou")
    return {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)] for k in keys}


def assert_same_training(reference_dir, reference, _uri, other_dir, other):
    assert other["replicas"] == "2"
    for key, values in reference["history"].items():
        np.testing.assert_allclose(other["history"][key], values, rtol=METRICS_RTOL, err_msg=key)
    with np.load(reference_dir / "checkpoints/last.state.npz") as a, np.load(other_dir / "checkpoints/last.state.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in set(a.files) - {checkpoint.RUN_ID}:  # two runs: two ids
            if a[name].dtype.kind in "US":  # the variables' names and shapes (checkpoint.signature)
                assert b[name] == a[name], name
            else:
                np.testing.assert_allclose(b[name], a[name], atol=WEIGHTS_ATOL, err_msg=name)


def finished(uri):
    client, run = the_run(uri)
    assert run.info.status == "FINISHED"
    history = histories(client, run)
    assert all(len(v) == EPOCHS for v in history.values()), history  # one set of metrics: one value per epoch
    return {"history": history, "replicas": run.data.tags["replicas"]}


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("single")
    uri = f"sqlite:///{cwd}/mlflow.db"
    run_cli(*SAME_STEPS, f"tracking.uri={uri}", f"hydra.run.dir={cwd}/run", cwd=cwd)
    return cwd / "run", finished(uri), uri


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_one_device(tmp_path, single_device):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests/split_cpu.py"), "2", *SAME_STEPS, "trainer.strategy=mirrored",
         f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same_training(*single_device, tmp_path / "run", finished(uri))


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(tmp_path, count, *overrides):
    """`count` processes of the real CLI with trainer.strategy=multi_worker, TF_CONFIG naming loopback ports:
    the launch command docs/performance.md gives.  Each writes worker<i>.log and runs in hydra.run.dir worker<i>."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(count)]
    procs = []
    for index in range(count):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "seglab", *overrides, "trainer.strategy=multi_worker", f"hydra.run.dir={tmp_path}/worker{index}"],
            cwd=tmp_path, env={**os.environ, **ENV, "TF_CONFIG": tf_config}, stdout=log, stderr=subprocess.STDOUT,
        ), log))
    return procs


def wait_all(procs, timeout):
    """Each worker's (exit code, output); a worker still running at the deadline is killed (its code then negative)."""
    deadline = time.monotonic() + timeout
    try:
        for proc, _ in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                break
    finally:
        for proc, log in procs:
            proc.kill()
            proc.wait()
            log.close()
    return [(proc.returncode, Path(log.name).read_text()) for proc, log in procs]


# Measured: the two workers end ~100 s after start on a busy 2-core machine; a worker waiting on one that
# died would wait for a collective, so both get one deadline, and the test (with the single-device run) a bound too.
WORKERS_TIMEOUT_S = 420


def train_workers(tmp_path, *overrides) -> list[str]:
    """Two workers of `overrides` to their end, both exiting 0; their logs."""
    outputs = []
    for index, (code, output) in enumerate(wait_all(start_workers(tmp_path, 2, *overrides), WORKERS_TIMEOUT_S)):
        assert code == 0, f"worker {index} exited {code}:\n{output[-4000:]}"
        outputs.append(output)
    return outputs


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """SAME_STEPS trained by two local processes (trainer.resume at its default, auto): (directory, uri)."""
    cwd = tmp_path_factory.mktemp("two_workers")
    uri = f"sqlite:///{cwd}/mlflow.db"
    train_workers(cwd, *SAME_STEPS, f"tracking.uri={uri}")
    return cwd, uri


@pytest.mark.slow
@pytest.mark.timeout(WORKERS_TIMEOUT_S + 300)
def test_multi_worker_with_two_local_processes_matches_one_device_and_only_the_chief_logs(two_workers, single_device):
    cwd, uri = two_workers
    assert_same_training(*single_device, cwd / "worker0", finished(uri))
    client, run = the_run(uri)
    _, reference = the_run(single_device[2])
    assert sorted(run.data.metrics) == sorted(reference.data.metrics)  # the same metrics as fit logs, no more, no fewer
    history = histories(client, run)["train_loss"]
    assert history[1] < history[0], history
    # The other worker saved to a deleted temporary directory (the path preflight made its own, empty).
    assert not any((cwd / "worker1/checkpoints").iterdir())
    assert_replicas_are_the_chiefs_checkpoint(cwd / "worker0/checkpoints/last.state.npz", [cwd / f"worker{i}.log" for i in (0, 1)])
    for index in (0, 1):  # the workers' consoles are quiet too: no "I0000 ... Started server with target: grpc://..."
        lines = (cwd / f"worker{index}.log").read_text().splitlines()
        assert not [line for line in lines if NOISE.search(line)], (cwd / f"worker{index}.log").read_text()[-3000:]


def assert_replicas_are_the_chiefs_checkpoint(state_file, worker_logs):
    """Bit-identical replicas: the chief's last checkpoint has the weights every worker reports it trained."""
    with np.load(state_file) as state:
        model = [state[f"model/{i}"] for i in range(sum(name.startswith("model/") for name in state.files))]
    expected = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in model)).hexdigest()
    for index, log in enumerate(worker_logs):
        assert f"final weights sha256 {expected} (worker {index} of {len(worker_logs)})" in log.read_text(), log


@pytest.mark.slow
@pytest.mark.timeout(3 * WORKERS_TIMEOUT_S)
def test_a_worker_killed_mid_run_ends_the_run_killed_and_rerunning_the_workers_continues_it_bit_identically(tmp_path, two_workers):
    """Worker 1 killed in epoch 2: the chief stops within seconds, its run ends KILLED naming why.  The same two
    commands again: the chief resumes the run from its epoch-1 checkpoint, worker 1 takes the chief's state
    (multi_worker.from_chief), and the run ends as the uninterrupted two-worker run, bit for bit."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = (*SAME_STEPS, f"tracking.uri={uri}")
    procs = start_workers(tmp_path, 2, *args)
    deadline = time.monotonic() + WORKERS_TIMEOUT_S
    while f"epoch 1/{EPOCHS}" not in (tmp_path / "worker1.log").read_text():
        assert time.monotonic() < deadline and procs[1][0].poll() is None, (tmp_path / "worker1.log").read_text()[-3000:]
        time.sleep(0.05)
    procs[1][0].kill()
    (code, output), _ = wait_all(procs, deadline - time.monotonic())
    assert code == 2, output[-3000:]
    assert output.strip().splitlines()[-1].startswith("seglab: a worker of the cluster stopped during training ("), output[-3000:]
    _, killed = the_run(uri)
    assert killed.info.status == "KILLED" and "a worker of the cluster stopped" in killed.data.tags[tags.ERROR]

    chief_log, _ = train_workers(tmp_path, *args)
    assert f"continuing run {killed.info.run_id} after epoch " in chief_log, chief_log[-3000:]
    client, run = the_run(uri)
    assert run.info.run_id == killed.info.run_id and tags.ERROR not in run.data.tags
    assert finished(uri)["history"] == finished(two_workers[1])["history"]  # each epoch's metrics once, the same values
    with np.load(two_workers[0] / "worker0/checkpoints/last.state.npz") as a, np.load(tmp_path / "worker0/checkpoints/last.state.npz") as b:
        for name in set(a.files) - {checkpoint.RUN_ID}:
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert_replicas_are_the_chiefs_checkpoint(tmp_path / "worker0/checkpoints/last.state.npz", [tmp_path / f"worker{i}.log" for i in (0, 1)])


@pytest.mark.slow
def test_confusion_matrix_metric_sums_over_replicas(tmp_path):
    """The int64 confusion-matrix variable (on-read, SUM) counts every pixel of every replica once."""
    script = """
import json, sys
import numpy as np, tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from seglab import losses, metrics
rng = np.random.default_rng(0)
labels = rng.integers(0, 3, (16, 8, 8)).astype(np.int32)
logits = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    cm = metrics.segmentation_metrics(3, ["a", "b", "c"])
    model.compile(loss=losses.CrossEntropy(3), metrics=cm)
scores = model.evaluate(tf.data.Dataset.from_tensor_slices((logits, labels)).batch(8), return_dict=True, verbose=0)
expected = metrics.confusion_matrix(labels, logits.argmax(-1), 3).numpy()
print(json.dumps({"matrix": np.asarray(cm[0].matrix.value).tolist(), "expected": expected.tolist(),
                  "pixel_accuracy": scores["pixel_accuracy"], "expected_accuracy": float(np.trace(expected) / expected.sum()),
                  "replicas": strategy.num_replicas_in_sync}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["matrix"] == out["expected"] and sum(map(sum, out["matrix"])) == 16 * 8 * 8
    assert out["pixel_accuracy"] == pytest.approx(out["expected_accuracy"], rel=1e-6)


@pytest.mark.slow
def test_batch_norm_is_synchronised_when_built_for_several_replicas(tmp_path):
    """Built in a two-replica strategy's scope (as train.py builds), every batch-norm layer of the U-Net,
    the MobileNetV2 decoder and its encoder from scratch uses the global batch's statistics."""
    script = """
import hashlib
import json
import tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tests.conftest import build_model
found = {}
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    for name, overrides in (("unet", {}), ("unet_mobilenet", {"encoder": {"weights": None}, "alpha": 0.35})):
        model = build_model(name, 3, 64, **overrides)
        layers = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
        found[name] = [len(layers), sum(l.synchronized for l in layers)]
print(json.dumps(found))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (layers, synchronised) in found.items():
        assert layers > 0 and synchronised == layers, (name, layers, synchronised)

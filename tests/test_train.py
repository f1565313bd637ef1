"""Real, tiny trainings through `python -m seglab`, checked through MlflowClient."""

import json
import signal
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from seglab.engine import checkpoint
from seglab.tracking.run import masks_file
from seglab.util import visualize
from tests.conftest import TINY, run_cli, signal_after


def only_run(uri, experiment="seglab-shapes"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the checks below."""
    cwd = tmp_path_factory.mktemp("train")
    uri = f"sqlite:///{cwd}/mlflow.db"
    done = run_cli(*TINY, f"tracking.uri={uri}", cwd=cwd)
    client, runs = only_run(uri)
    assert len(runs) == 1
    return client, runs[0], done, uri


@pytest.mark.slow
def test_run_finishes_with_name_params_and_tags(trained):
    client, run, done, _ = trained
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "unet-ce-shapes"
    params = run.data.params
    assert params["model._target_"] == "seglab.models.unet.build"
    assert params["trainer.epochs"] == "2" and params["data.image_size"] == "32"
    assert params["data.source.image_size"] == "32"  # resolved interpolation, not "${..image_size}"
    tags = run.data.tags
    assert "trainer.epochs=2" in tags["hydra.overrides"]
    assert "trainer.epochs=2" in json.loads(tags["seglab.overrides"])  # the same overrides, as a list for programs
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # the device this machine offers, so the suite passes on a GPU machine too
    assert tags["device"].startswith(f"GPU x{len(gpus)}") if gpus else tags["device"] == "CPU"
    assert tags["keras.version"].startswith("3.")
    assert int(tags["model.parameters"]) > 0
    assert tags["seglab.xla"] == "false"  # deterministic=true: Keras compiles without XLA (and the config refuses asking for it)
    assert "best val_mean_iou" in done.stderr + done.stdout and run.info.run_id in done.stderr + done.stdout
    from seglab.tracking import tags as keys

    kind = client.get_experiment(run.info.experiment_id).tags.get(keys.EXPERIMENT_KIND)
    assert kind == keys.EXPERIMENT_KIND_MODEL_TRAINING  # MLflow 3's UI shows it as model training, not a GenAI app


@pytest.mark.slow
def test_metrics_are_logged_per_epoch_with_steps(trained):
    client, run, _, _ = trained
    for key in ("train_loss", "val_loss", "val_mean_iou", "val_mean_dice", "val_pixel_accuracy", "val_iou_boundary",
                "train_mean_iou", "train_images_per_second"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [0, 1], key
        assert all(np.isfinite(m.value) for m in history)
    best = max(m.value for m in client.get_metric_history(run.info.run_id, "val_mean_iou"))
    assert float(run.data.tags["best_val_mean_iou"]) == pytest.approx(best)


@pytest.mark.slow
def test_mask_images_checkpoints_and_config_are_artifacts(trained):
    client, run, _, _ = trained
    rid = run.info.run_id
    images = [a.path for a in client.list_artifacts(rid, "images")]
    pngs = [p for p in images if p.endswith(".png") and "val_masks" in p]
    assert len(pngs) >= 2, images  # one per epoch (MLflow also stores compressed previews)
    local = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=pngs[0], tracking_uri=trained[3])
    from PIL import Image

    grid = np.asarray(Image.open(local))
    assert grid.shape[1] > 3 * 32 and grid.shape[0] >= 2 * 32  # 3 panels wide, 2 samples high
    # The same pictures as artifact files, numbered as the console numbers epochs (1, 2), larger, with a legend.
    assert {a.path for a in client.list_artifacts(rid, "masks")} == {masks_file(0), masks_file(1)} == {
        "masks/epoch_001.png", "masks/epoch_002.png"}
    local = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=masks_file(1), tracking_uri=trained[3])
    assert Image.open(local).size[0] >= 3 * visualize.MASK_PANEL_PX
    checkpoints = {a.path for a in client.list_artifacts(rid, "checkpoints")}
    assert checkpoints == {"checkpoints/best.keras", "checkpoints/last.state.npz"}
    assert "config.yaml" in {a.path for a in client.list_artifacts(rid)}


@pytest.mark.slow
def test_logged_model_loads_back_and_predicts_logits(trained):
    _, run, _, uri = trained
    mlflow.set_tracking_uri(uri)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert np.asarray(pyfunc.predict(x)).shape == (2, 32, 32, 3)
    keras_model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    np.testing.assert_allclose(keras_model.predict(x, verbose=0), pyfunc.predict(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_same_config_gives_bit_identical_weights_and_metrics(tmp_path, trained):
    """The module's run again (in another directory, without the model logged: neither enters the training)."""
    client_a, run_a, _, _ = trained
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli(*TINY, f"tracking.uri={uri}", "tracking.log_model=false", f"hydra.run.dir={tmp_path}/run2", cwd=tmp_path)
    client_b, (run_b,) = only_run(uri)
    for key in ("train_loss", "val_mean_iou", "val_loss"):
        a, b = ([(m.step, m.value) for m in c.get_metric_history(r.info.run_id, key)] for c, r in ((client_a, run_a), (client_b, run_b)))
        assert len(a) == 2 and a == b, key
    first = Path(run_a.data.tags["hydra.output_dir"]) / "checkpoints/last.state.npz"
    with np.load(first) as a, np.load(tmp_path / "run2/checkpoints/last.state.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert str(a[checkpoint.RUN_ID]) == run_a.info.run_id and str(b[checkpoint.RUN_ID]) == run_b.info.run_id
        for name in set(a.files) - {checkpoint.RUN_ID}:  # what was learned; the run id says whose file it is
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.slow  # no training, but the whole run up to fit: ~45 s measured on a busy 2-core machine
def test_crash_ends_the_run_failed_with_the_error(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = run_cli(*TINY, f"tracking.uri={uri}", "optimizer._target_=keras.optimizers.NoSuchOptimizer", cwd=tmp_path, check=False)
    assert done.returncode != 0
    _, runs = only_run(uri)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "NoSuchOptimizer" in runs[0].data.tags["error"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, how, code", [(signal.SIGINT, "interrupted (Ctrl-C)", 130), (signal.SIGTERM, "terminated (SIGTERM)", 143)])
def test_ctrl_c_and_sigterm_end_the_run_killed_in_one_line(tmp_path, sig, how, code):
    """Sent after the first epoch's line: one line on stderr (no traceback), exit 128 + the signal, the run
    KILLED with the reason and the epoch it was in as its `error` tag (1-based, as the console counts)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code_, added = signal_after("epoch   1/500", sig, "seglab", *TINY, "trainer.epochs=500", f"tracking.uri={uri}", cwd=tmp_path)
    assert code_ == code, added
    client, runs = only_run(uri)
    assert [r.info.status for r in runs] == ["KILLED"]
    epoch = len(client.get_metric_history(runs[0].info.run_id, "val_loss")) + 1  # the epoch under way
    assert runs[0].data.tags.get("error") == f"{how} at epoch {epoch}", added
    # What the signal added (before it: TensorFlow's start-up notices, e.g. cuInit on a machine without a GPU)
    # TensorFlow itself may print "Exception ignored in: <function Executor.__del__ ...>" while the
    # interpreter shuts down after the signal (seen once in CI, not seglab's output): cut it off.
    seglab_said = added.split("Exception ignored in: <function Executor.__del__", 1)[0]
    assert seglab_said.splitlines() == [
        f"seglab: {how} at epoch {epoch}; run the same command again to continue run {runs[0].info.run_id}"], added


RUN_DIR = """
import sys, time
from hydra import compose, initialize_config_dir
from seglab.config import schema
at = float(sys.argv[1])
time.sleep(max(0.0, at - time.time()))
with initialize_config_dir(config_dir=schema.CONF_DIR, version_base="1.3"):
    print(compose(config_name="config", return_hydra_config=True).hydra.run.dir)
"""


def test_two_commands_started_in_the_same_second_get_two_output_directories(tmp_path):
    """hydra.run.dir (conf/config.yaml): Hydra's outputs/<date>/<time> alone is shared by two trainings started in
    one second, whose checkpoints then overwrite each other's; the pid keeps them apart."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    at = int(time.time()) + 6.1  # both resolve `now` in the same second
    procs = [subprocess.Popen([sys.executable, "-c", RUN_DIR, str(at)], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(2)]
    said = [p.communicate(timeout=120) for p in procs]
    dirs = [out.strip() for out, _ in said]
    assert all(dirs) and all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in said]
    assert dirs[0] != dirs[1] and Path(dirs[0]).parent == Path(dirs[1]).parent, dirs
    assert {Path(d).name.rsplit("-", 1)[1] for d in dirs} == {str(p.pid) for p in procs}

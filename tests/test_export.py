"""`python -m seglab.export`: a trained model out of MLflow as ONNX (onnxruntime matches Keras within
1e-4), LiteRT (runs in TensorFlow's interpreter) and a SavedModel, each logged to the training run;
a bad format or an unwritable output answers in one line before TensorFlow loads; an export is whole
or absent after a failed write or a kill -9."""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from seglab import errors
from seglab.cli import export as export_cli
from seglab.engine import export
from tests.conftest import CLI_ENV, ROOT, TINY, inherited_env, run_cli

ONNX_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training: (tracking URI, run id)."""
    cwd = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{cwd}/mlflow.db"
    run_cli(*TINY, "trainer.epochs=1", f"tracking.uri={uri}", cwd=cwd, timeout=900)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    return uri, run.info.run_id


def printed_difference(text: str) -> float:
    return float(re.search(r"max abs difference from the Keras model's logits on a sample input: (\S+?)(;|$)", text, re.M).group(1))


@pytest.mark.slow
@pytest.mark.parametrize("fmt,file,tolerance", [("onnx", "model.onnx", ONNX_TOLERANCE), ("litert", "model.tflite", 1e-4),
                                                ("saved_model", "saved_model", 1e-5)])
def test_export_runs_in_its_runtime_like_keras_and_is_logged_to_the_run(trained, tmp_path, capsys, fmt, file, tolerance):
    from seglab import tracking

    uri, run_id = trained
    code = errors.main(export_cli.main, [f"model_uri=runs:/{run_id}/model", f"format={fmt}", f"output={tmp_path}",
                                         f"tracking.uri={uri}"], prog="seglab.export")
    out = capsys.readouterr().out
    assert code == 0, out
    assert printed_difference(out) <= tolerance
    assert f"logged to run {run_id} as export/{fmt}/{file}" in out
    # Independently of the command: the file, in its own runtime, on another input, against the Keras model.
    model = tracking.load_model(f"runs:/{run_id}/model", uri)
    x = np.random.default_rng(7).uniform(size=(1, *model.input_shape[1:])).astype(np.float32)
    got = export.RUNNERS[fmt](tmp_path / file, x)
    assert got.shape == (1, *model.output_shape[1:])
    assert np.max(np.abs(got - np.asarray(model(x, training=False)))) <= tolerance
    logged = {a.path for a in MlflowClient(uri).list_artifacts(run_id, f"export/{fmt}")}
    assert f"export/{fmt}/{file}" in logged
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"  # logged to, not reopened


# The command as `python -m seglab.export ARGS` runs it; at exit, whether TensorFlow was imported on the way.
_RUN_AND_TELL = """
import atexit, sys
atexit.register(lambda: print("tensorflow loaded" if "tensorflow" in sys.modules else "tensorflow not loaded", file=sys.stderr))
from seglab.cli import export
export.cli()
"""


@pytest.mark.parametrize(
    "args,message",
    [
        (("format=tflite",), "format=tflite is not allowed: choose one of onnx, litert, saved_model."),
        (("format=onnx", "output=/proc/seglab-export"), "output=/proc/seglab-export: cannot write to /proc/seglab-export"),
        (("format=onnx", "batch_size=0"), "batch_size=0 is not allowed: use an integer >= 1, or null for any batch."),
    ],
)
def test_bad_format_or_unwritable_output_answer_in_one_line_before_tensorflow(tmp_path, args, message):
    given = {"model_uri": "runs:/0123/model", "output": str(tmp_path / "out"), **dict(a.split("=", 1) for a in args)}
    done = subprocess.run([sys.executable, "-c", _RUN_AND_TELL, *(f"{k}={v}" for k, v in given.items())], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line != "tensorflow not loaded"]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "tensorflow not loaded" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,arguments,batch_size",
    [("deeplabv3plus", dict(depth=18), None), ("segformer", dict(decoder_width=16), 1), ("unet", dict(depth=2, base_filters=4), None),
     ("unet", dict(depth=2, base_filters=4), 2)],  # a file for batches of 2 is checked on a batch of 2
)
def test_onnx_of_a_kerashub_model_matches_keras(tmp_path, name, arguments, batch_size):
    """Traced as `model(x, training=False)` (engine/export.InferenceCall): Keras' own `model.call` trace left
    DeepLabV3+'s ONNX and SavedModel logits 2.4 away from the Keras model's.  SegFormer's ONNX runs in
    onnxruntime with a fixed batch only (KerasHub's MiT attention reshapes with the batch left open)."""
    from tests.conftest import build_model

    model = build_model(name, 3, 64, **arguments)
    assert export.export(model, "onnx", tmp_path, batch_size).max_abs_difference <= ONNX_TOLERANCE


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself) -> its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): p.read_bytes() for p in files}


def export_command(run_id: str, uri: str, fmt: str, output: Path) -> list[str]:
    return [sys.executable, "-m", "seglab.export", f"model_uri=runs:/{run_id}/model", f"format={fmt}", f"output={output}",
            f"tracking.uri={uri}"]


@pytest.mark.slow
def test_a_write_past_the_file_size_limit_names_the_file_and_leaves_the_previous_export(trained, tmp_path):
    """RLIMIT_FSIZE makes TensorFlow's write of saved_model.pb fail with EFBIG, as a full disk fails with ENOSPC;
    the limit lets the model's download (model.keras, half its size) through."""
    uri, run_id = trained
    assert errors.main(export_cli.main, export_command(run_id, uri, "saved_model", tmp_path)[3:], prog="seglab.export") == 0
    before = tree(tmp_path / "saved_model")
    limit = len(before["saved_model/saved_model.pb"]) * 3 // 4  # its size varies a little from export to export

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(export_command(run_id, uri, "saved_model", tmp_path), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**inherited_env(), **CLI_ENV}, preexec_fn=small_files)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"seglab.export: cannot write {tmp_path}/saved_model (File too large"), done.stderr
    assert "the previous saved_model is as it was" in last and "Traceback" not in done.stderr
    assert tree(tmp_path / "saved_model") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model"]  # no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("fmt,name", [("onnx", "model.onnx"), ("saved_model", "saved_model")])
def test_kill_9_mid_export_leaves_the_previous_export_whole(trained, tmp_path, fmt, name):
    """A previous export stands at the target; the new one is killed (SIGKILL) as soon as its writing shows
    (a temporary beside the target, or the target itself changed), and the target is still the previous one.
    The next export removes the dead writer's temporary."""
    uri, run_id = trained
    target = tmp_path / "out" / name
    if fmt == "saved_model":
        (target / "variables").mkdir(parents=True)
        (target / "variables" / "variables.index").write_bytes(b"previous export")
    else:
        target.parent.mkdir()
        target.write_bytes(b"previous export")
    before = tree(target)
    proc = subprocess.Popen(export_command(run_id, uri, fmt, target.parent), cwd=tmp_path, env={**inherited_env(), **CLI_ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if len(list(target.parent.iterdir())) > 1 or tree(target) != before:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export ended before it could be killed"
    assert tree(target) == before
    assert errors.main(export_cli.main, export_command(run_id, uri, fmt, target.parent)[3:], prog="seglab.export") == 0
    assert [p.name for p in target.parent.iterdir()] == [name]

"""`python -m seglab.predict` with a model from the tracking stack (runs:/ URI through the server).
The main test calls the entry point in this process (TensorFlow is loaded once); the last one runs
the command line."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT


def predict_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "seglab.predict", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_writes_a_mask_and_an_overlay_per_image_at_its_own_size(tracking_stack, stack_run, tmp_path, capsys, caplog):
    from seglab.cli import predict

    run_id, _, _ = stack_run
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    exact = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # the model's own input size
    Image.fromarray(exact).save(images / "exact.png")
    Image.fromarray(rng.integers(0, 256, (41, 77, 3), dtype=np.uint8)).save(images / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, (90, 20), dtype=np.uint8)).save(images / "sub" / "grey.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(images / "wide.png")  # same stem as wide.jpg
    (images / "notes.txt").write_text("not an image")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    out = tmp_path / "out"
    code = predict.main([f"model_uri=runs:/{run_id}/model", f"input={images}", f"output={out}", "batch_size=2",
                         f"tracking.uri={tracking_stack.uri}"])
    assert code == 0
    for relative, (height, width) in {"exact.png": (32, 32), "wide.jpg": (41, 77), "wide.png": (30, 30), "sub/grey.png": (90, 20)}.items():
        mask = np.asarray(Image.open(out / f"{relative}_mask.png"))
        overlay = Image.open(out / f"{relative}_overlay.png")
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 1, 2}, relative
        assert overlay.size == (width, height) and overlay.mode == "RGB", relative
    for name in ("notes.txt", "broken.png"):
        assert f"skipped {images / name}: not a readable image" in caplog.text
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().out
    # The mask is the model's own prediction (no resizing at the model's input size).
    import mlflow

    mlflow.set_tracking_uri(tracking_stack.uri)
    model = mlflow.tensorflow.load_model(f"runs:/{run_id}/model")
    expected = np.argmax(model.predict(exact[None].astype(np.float32) / 255.0, verbose=0)[0], axis=-1)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "exact.png_mask.png")), expected)


def test_predict_command_line_names_a_missing_input(tmp_path):
    done = predict_cli("model_uri=runs:/0/model", f"input={tmp_path}/nowhere", "output=out", cwd=tmp_path)
    assert done.returncode == 2
    assert f"input={tmp_path}/nowhere does not exist" in done.stderr

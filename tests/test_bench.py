"""`python -m seglab.bench`: a tiny real run; the JSON has every figure, positive and finite."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT

TINY_BENCH = (
    "bench.steps=3", "bench.warmup=2", "bench.repeats=1", "bench.matmul_size=256", "bench.data=synthetic",
    "data.image_size=32", "model.depth=2", "model.base_filters=4", "trainer.batch_size=8",
)


@pytest.mark.slow
def test_tiny_bench_writes_a_table_json_and_an_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    done = subprocess.run(
        [sys.executable, "-m", "seglab.bench", *TINY_BENCH, f"bench.out={tmp_path}/b.json", f"bench.tracking_uri={uri}"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "img/s" in done.stdout and "ratio" in done.stdout
    report = json.loads((tmp_path / "b.json").read_text())
    (row,) = report["results"]
    assert (row["model"], row["precision"], row["jit_compile"], row["data"]) == ("unet", "float32", False, "synthetic")
    assert row["xla"] is False  # what Keras compiled
    for key in ("images_per_second", "plain_keras_images_per_second", "overhead_ratio", "efficiency", "peak_rss_mb",
                "forward_gflops"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert 0 <= row["logging_share"] < 1
    assert report["machine"]["matmul_flops_per_second"]["float32"] > 0
    assert report["startup"]["cfg_job_seconds"] > 0 and report["startup"]["first_step_seconds"] > report["startup"]["cfg_job_seconds"]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-bench").experiment_id], "attributes.run_name = 'bench'",
                                max_results=10, order_by=["attributes.start_time DESC"])[:1]
    assert run.data.metrics["unet.float32.noxla.synthetic.images_per_second"] == pytest.approx(row["images_per_second"])


def test_bad_bench_option_is_named(tmp_path):
    done = subprocess.run([sys.executable, "-m", "seglab.bench", "bench.precisions=float8"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "bench.precisions='float8' is not allowed" in done.stderr


@pytest.mark.slow
def test_ctrl_c_ends_the_bench_in_one_line(tmp_path):
    """Ctrl-C while it measures: exit code 130 and one line on stderr, no traceback."""
    out, err = open(tmp_path / "out.txt", "w"), open(tmp_path / "err.txt", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seglab.bench", *TINY_BENCH, "bench.steps=1000000", f"bench.out={tmp_path}/b.json"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"},
        stdout=out, stderr=err,
        # Ctrl-C as in a terminal: a test suite started in the background has SIGINT ignored, and so would the bench.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 300
        while "measuring unet" not in (tmp_path / "out.txt").read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
        before = (tmp_path / "err.txt").read_text()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        out.close()
        err.close()
    said = (tmp_path / "err.txt").read_text()
    # 130 (seglab.errors' exit code) or ended by SIGINT itself, which a shell also reports as 130: both are Ctrl-C's end.
    assert proc.returncode in (130, -signal.SIGINT), said[-3000:]
    added = [line for line in said[len(before):].splitlines() if line.strip()]
    assert added == ["seglab.bench: interrupted (Ctrl-C)"], said[-3000:]

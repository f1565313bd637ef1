"""`python -m seglab.bench`: a tiny real run; the JSON has every figure, positive and finite."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, noisy_lines, signal_after

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
    assert not noisy_lines(done), "\n".join(noisy_lines(done))  # e.g. Keras' UserWarning of fit(shuffle=True) on a tf.data set
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
    code, added = signal_after("measuring unet", signal.SIGINT, "seglab.bench", *TINY_BENCH, "bench.steps=1000000",
                               f"bench.out={tmp_path}/b.json", cwd=tmp_path)
    # 130 (seglab.errors' exit code) or ended by SIGINT itself, which a shell also reports as 130: both are Ctrl-C's end.
    assert code in (130, -signal.SIGINT), added
    assert [line for line in added.splitlines() if line.strip()] == ["seglab.bench: interrupted (Ctrl-C)"], added

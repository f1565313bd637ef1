"""`python -m seglab.data NAME`: the pipeline benchmark composes the real config and writes a sample grid."""

import re
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import ROOT


def test_benchmark_prints_images_per_second_and_writes_samples(tmp_path):
    out = tmp_path / "samples.png"
    done = subprocess.run(
        [sys.executable, "-m", "seglab.data", "shapes", "data.image_size=32", "data.source.train_size=64",
         "data.augment.crop_min=0.8", "--passes", "2", "--samples", "4", "--out", str(out)],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rates = re.search(r"first pass (\d+) images/s .* later passes (\d+) images/s", done.stdout)
    assert rates and int(rates.group(2)) > 0, done.stdout
    cost = re.search(r"([\d.]+) CPU-ms per image", done.stdout)
    assert cost and float(cost.group(1)) > 0, done.stdout
    grid = np.asarray(Image.open(out))
    gap = 2  # seglab.visualize.SEPARATOR_PX
    assert grid.shape == (4 * 32 + 3 * gap, 2 * 32 + gap, 3)  # 4 samples: image | mask


def test_benchmark_rejects_bad_overrides_like_the_runner(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "seglab.data", "shapes", "data.augment.crop_min=0"],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0 and "data.augment.crop_min=0" in done.stderr

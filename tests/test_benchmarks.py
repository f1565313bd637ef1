"""benchmarks/own_data.py, each measurement end to end at a tiny size: the data it writes, the real commands it
runs, the tables it prints (the full-size figures of docs/own-data.md come from the same code)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hydra.utils import instantiate
from mlflow import MlflowClient
from PIL import Image

from seglab.config import schema

from tests.conftest import CLI_ENV, ROOT, inherited_env

SCRIPT = ROOT / "benchmarks" / "own_data.py"


def own_data(*args: str, cwd) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env={**inherited_env(), **CLI_ENV},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return done.stdout


def rows(table_output: str) -> list[list[str]]:
    """The cells of each markdown table row after the header."""
    lines = [line for line in table_output.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.slow
def test_throughput_writes_camvid_folders_and_times_both_pipelines(tmp_path):
    out = own_data("throughput", str(tmp_path), "--images", "8", "--rounds", "1", "--passes", "2", "--image-size", "32", cwd=tmp_path)
    frames = tmp_path / "frames"
    assert len(list((frames / "train").glob("*.png"))) == 8 and len(list((frames / "trainannot").glob("*.png"))) == 8
    image, mask = Image.open(frames / "train" / "train_00000.png"), Image.open(frames / "trainannot" / "train_00000.png")
    assert image.size == mask.size == (480, 360) and image.mode == "RGB" and mask.mode == "L"
    assert set(mask.getdata()) <= set(range(12)) | {255}
    table = {row[0]: row for row in rows(out)}
    assert set(table) == {"data=folder", "plain tf.data", "plain tf.data, autotune off"} and all(float(table[name][2]) > 0 for name in table), out
    ratio = float(re.search(r"data=folder / plain tf.data: ([\d.]+)", out).group(1))
    assert ratio == pytest.approx(float(table["data=folder"][2]) / float(table["plain tf.data"][2]), rel=0.05), out
    assert all(float(table[name][4]) > 0 for name in table), out  # CPU-ms per image, the load-proof cost
    cost = float(re.search(r"CPU per image ([\d.]+) of plain's", out).group(1))
    assert cost == pytest.approx(float(table["data=folder"][4]) / float(table["plain tf.data"][4]), rel=0.05), out
    off = float(re.search(r"data=folder / plain tf.data, autotune off: ([\d.]+)", out).group(1))
    assert off == pytest.approx(float(table["data=folder"][2]) / float(table["plain tf.data, autotune off"][2]), rel=0.05), out
    stages = rows(own_data("stages", str(tmp_path), "--rounds", "1", "--image-size", "32", cwd=tmp_path))
    assert [r[0] for r in stages][0] == "plain tf.data" and len(stages) == 4, stages
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in stages), stages  # CPU-ms per image, images/s


@pytest.mark.slow
def test_memory_reports_peak_rss_per_count_and_cache(tmp_path):
    out = own_data("memory", str(tmp_path), "--counts", "8", "16", "--frame", "64", "48", "--image-size", "32", cwd=tmp_path)
    assert [(r[0], r[1]) for r in rows(out)] == [("8", "null"), ("8", "file"), ("16", "null"), ("16", "file")], out
    assert all(200 < float(r[2]) < 8000 for r in rows(out)), out  # TensorFlow's process, in MiB (not kB, not bytes)
    assert len(list((tmp_path / "n16" / "train").glob("*.png"))) == 16
    assert list((tmp_path / "work" / "cache-n16").glob("c-folder-train-*.index")), "the file cache was not written"


@pytest.mark.slow
def test_versus_keras_trains_what_inspect_prints_and_a_plain_keras_unet(tmp_path):
    out = own_data("versus-keras", str(tmp_path), "--images", "16", "--frame", "64", "48", "--epochs", "1",
                   "--base-filters", "4", "--seeds", "7", cwd=tmp_path)
    command = re.search(r"^  (python -m seglab data=folder .*)$", out, re.M).group(1)
    assert "data.ignore_index=255" in command and "data.resize=fit" in command, command
    frames = tmp_path / "frames"
    assert [len(list((frames / s).glob("*.png"))) for s in ("train", "val", "test")] == [10, 3, 3]  # 60/20/20; batch 8 needs 8 training images
    assert set(Image.open(frames / "testannot" / "test_00000.png").getdata()) == {0, 1, 255}
    client = MlflowClient(f"sqlite:///{tmp_path}/work/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trained = [r for r in runs if "seglab.training_run_id" not in r.data.tags]
    assert len(trained) == 1 and trained[0].data.params["data.resize"] == "fit"
    assert trained[0].data.params["seed"] == "7", "the seglab run of --seeds 7 trains at seed=7"
    assert trained[0].data.params["trainer.epochs"] == "1" and trained[0].data.params["model.base_filters"] == "4"
    scored = [r for r in runs if r.data.tags.get("seglab.training_run_id") == trained[0].info.run_id]
    table = {row[0]: row for row in rows(out)}
    assert set(table) == {"7", "mean ± sd"}, out
    seglab, plain, difference = map(float, table["7"][1:])
    assert seglab == pytest.approx(scored[0].data.metrics["test_mean_iou"], abs=5e-4)
    assert 0.0 <= plain <= 1.0 and difference == pytest.approx(seglab - plain, abs=1.5e-3)
    assert table["mean ± sd"][1:] == [f"{seglab:.3f} ± 0.000", f"{plain:.3f} ± 0.000", f"{difference:+.3f} ± 0.000"]


def test_versus_keras_reports_mean_and_sample_sd_of_the_seeds():
    from benchmarks.own_data import spread  # the script's own summary of several seeds

    assert spread([0.90, 0.92, 0.94]) == "0.920 ± 0.020"
    assert spread([-0.01, 0.03], sign=True) == "+0.010 ± 0.028"


def test_judge_reads_the_seeds_fixed_in_advance_from_several_logs_and_gives_the_verdict_only_when_all_are_in(tmp_path):
    """`judge`, the test docs/own-data.md fixed before it ran: versus-keras' seed lines from several logs, only the
    seeds named, the paired 95 % t interval (mean 0.02, sd 0.01, n 3: t 4.303, half 0.0248) and the rule's verdict."""
    def log(name, lines):
        (tmp_path / name).write_text("inspect says:\n  python -m seglab ...\n" + "".join(
            f"seed {seed}: seglab {ours:.3f}, plain Keras {theirs:.3f}  (load average 1.0 1.0 1.0)\n" for seed, ours, theirs in lines))
        return str(tmp_path / name)

    first, second = log("a.log", [(60, 0.25, 0.24), (99, 0.10, 0.90)]), log("b.log", [(61, 0.26, 0.23), (62, 0.27, 0.25)])
    out = own_data("judge", first, "--seeds", "60", "61", "62", cwd=tmp_path)
    assert [row[0] for row in rows(out)] == ["60"] and "1 of the 3 seeds run (missing: 61 62): judged when all are in" in out
    out = own_data("judge", first, second, "--seeds", "60", "61", "62", cwd=tmp_path)
    assert rows(out) == [["60", "0.250", "0.240", "+0.010"], ["61", "0.260", "0.230", "+0.030"], ["62", "0.270", "0.250", "+0.020"]]
    assert out.rstrip().endswith("seglab - plain over 3 seeds: +0.020, 95 % t interval -0.005 to +0.045: "
                                 "seglab reaches the script within 0.02"), out
    short = log("c.log", [(1, 0.20, 0.25), (2, 0.20, 0.24), (3, 0.20, 0.26)])
    assert own_data("judge", short, "--seeds", "1", "2", "3", cwd=tmp_path).rstrip().endswith("falls short of the script")
    wide = log("d.log", [(1, 0.20, 0.25), (2, 0.22, 0.20), (3, 0.20, 0.23)])
    assert own_data("judge", wide, "--seeds", "1", "2", "3", cwd=tmp_path).rstrip().endswith(": not settled")
    other = log("e.log", [(60, 0.21, 0.24)])
    done = subprocess.run([sys.executable, str(SCRIPT), "judge", first, other, "--seeds", "60"], capture_output=True, text=True)
    assert done.returncode != 0 and "seed 60 reads (0.21, 0.24), another log (0.25, 0.24): which run counts?" in done.stderr


def write_tree(tree, counts: dict, foreground: int = 1) -> None:
    """CamVid's layout (split/ + splitannot/), 64x48 frames, masks 0 and `foreground`."""
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        (tree / split).mkdir(parents=True)
        (tree / f"{split}annot").mkdir()
        for i in range(count):
            mask = np.zeros((48, 64), np.uint8)
            mask[:, rng.integers(8, 56):] = foreground
            image = np.where(mask[..., None] == foreground, 200, 40).astype(np.uint8).repeat(3, -1)
            Image.fromarray(image).save(tree / split / f"{split}{i}.png")
            Image.fromarray(mask, mode="L").save(tree / f"{split}annot" / f"{split}{i}.png")


@pytest.mark.slow
def test_versus_keras_data_uses_a_given_tree_as_it_is(tmp_path):
    tree = tmp_path / "mine"
    write_tree(tree, {"train": 8, "val": 2, "test": 2})  # batch 8 needs 8 training images
    work = tmp_path / "work-dir"
    out = own_data("versus-keras", str(work), "--data", str(tree), "--epochs", "1", "--base-filters", "4", "--seeds", "7",
                   "--seglab", "data.resize=stretch", cwd=tmp_path)
    assert not (work / "frames").exists() and f"on mine ({tree})" in out, out
    assert re.search(rf"^  python -m seglab data=folder data.source.path={tree} ", out, re.M), out
    assert "8 train / 2 val / 2 test" in out, out
    client = MlflowClient(f"sqlite:///{work}/work/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trained = [r for r in runs if "seglab.training_run_id" not in r.data.tags]
    assert len(trained) == 1 and trained[0].data.params["data.source.path"] == str(tree)
    assert trained[0].data.params["data.resize"] == "stretch" and "; seglab with data.resize=stretch" in out, out  # --seglab, in place of fit
    table = {row[0]: row for row in rows(out)}
    assert set(table) == {"7", "mean ± sd"}, out
    assert all(0.0 <= float(value) <= 1.0 for value in table["7"][1:3]), out


@pytest.mark.slow
def test_swap_fits_each_unet_on_each_sides_batches(tmp_path):
    """8 training images, batch 8: one batch an epoch, so both sides' batches hold the same images (stretched to the
    same size; seglab's rounded to uint8) and each of the four fits starts from its seed: their losses agree to
    rounding and dropout, which they would not if a side's batches, labels, loss or model were another's."""
    tree = tmp_path / "mine"
    write_tree(tree, {"train": 8, "val": 2, "test": 2})
    out = own_data("swap", str(tmp_path / "work"), "--data", str(tree), "--epochs", "2", "--base-filters", "4", "--seeds", "7",
                   "--seglab", "data.resize=stretch", cwd=tmp_path)
    table = {row[0]: row for row in rows(out)}
    assert set(table) == {"7"}, out
    losses = [float(value) for value in table["7"][1:]]
    assert len(losses) == 4 and all(0.05 < loss < 2.0 for loss in losses), out  # two classes: ln 2 = 0.69 at the start
    assert max(losses) - min(losses) < 0.03, out


def test_versus_keras_data_without_a_test_split_says_so(tmp_path):
    write_tree(tmp_path / "mine", {"train": 4, "val": 2})
    done = subprocess.run([sys.executable, str(SCRIPT), "versus-keras", str(tmp_path / "w"), "--data", str(tmp_path / "mine")],
                          cwd=tmp_path, env={**inherited_env(), **CLI_ENV}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "has no test split" in done.stderr, done.stderr


def test_the_plain_script_reads_the_files_seglab_splits_and_maps_0_255_masks_as_inspect_says(tmp_path):
    """A pool of 0/255 masks (one pair of folders, no splits): the plain side gets seglab's seeded split, file for
    file, and the label table of the label_map inspect printed (255 -> class 1)."""
    from benchmarks.own_data import inspected, plain_files

    tree = tmp_path / "pool"
    write_tree(tree, {"all": 20}, foreground=255)
    (tree / "all").rename(tree / "images")
    (tree / "allannot").rename(tree / "masks")
    overrides = inspected(tree, tmp_path)
    assert "data.source.label_map={0:0,255:1}" in " ".join(overrides)
    overrides.append("data.source.test_fraction=0.2")
    files = plain_files(overrides, tmp_path / "work")
    cfg = schema.compose(overrides)
    seglab_splits = instantiate(cfg.data.source).about
    for split in ("train", "val", "test"):
        assert [f for pair in files[split] for f in pair] == seglab_splits[split].files
    lut = json.loads((tmp_path / "work" / "plain.json").read_text())["lut"]
    assert (lut[0], lut[255], lut[7]) == (0, 1, 255)


@pytest.mark.slow
def test_same_batches_finds_the_pipelines_equal_to_uint8_rounding_and_fit_s_padding_where_frames_differ(tmp_path):
    """`same-batches`: what versus-keras compares, without training.  Stretched, seglab's batches are the plain
    script's (images within the uint8 rounding, masks equal) and its U-Net is the script's; with data.resize=fit the
    frame of another aspect is padded on seglab's side only, and the table shows it."""
    tree = tmp_path / "mine"
    write_tree(tree, {"train": 8, "val": 2, "test": 2})
    wide = np.zeros((32, 64), np.uint8)  # 2:1 among 4:3 frames: fit pads it, the script stretches it
    wide[:, 40:] = 1
    Image.fromarray(np.where(wide[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, -1)).save(tree / "test" / "wide.png")
    Image.fromarray(wide, mode="L").save(tree / "testannot" / "wide.png")
    out = own_data("same-batches", str(tmp_path / "stretch"), "--data", str(tree), "--seglab", "data.resize=stretch", cwd=tmp_path)
    table = {row[0]: row for row in rows(out)}
    assert set(table) == {"train", "val", "test"} and table["test"][1] == "3 of 3", out
    for split in table.values():
        assert float(split[2]) <= 0.5 / 255 + 1e-6 and split[3].startswith("0 of ") and split[4] == "0 / 0", out
    assert "the same layers, settings and initialisers in the same order: yes" in out, out
    out = own_data("same-batches", str(tmp_path / "fit"), "--data", str(tree), "--seglab", "data.image_size=[48,64]",
                   "data.resize=fit", cwd=tmp_path)
    table = {row[0]: row for row in rows(out)}
    assert all(float(table[s][2]) <= 0.5 / 255 + 1e-6 and table[s][3].startswith("0 of ") for s in ("train", "val")), out  # 4:3 at 4:3
    assert table["test"][4] == f"{(48 - 32) * 64} / 0" and int(table["test"][3].split(" of ")[0]) >= (48 - 32) * 64, out
    assert float(table["test"][2]) > 0.5, out  # the padding is 0 where the stretched frame has its pixels

"""The sweep report's rows from child runs as the tracking module returns them (plain values)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from seglab.engine import summary
from seglab.engine import lifecycle
from seglab.tracking import tags as keys
from seglab.tracking.sweeps import ChildRun, EvalRun


def _child(job: int, overrides: list[str], key: str, start_ms: int, status: str = "FINISHED", ious=(0.5,)) -> ChildRun:
    tags = {keys.HYDRA_JOB_NUM: str(job), keys.RUN_KEY: key, **lifecycle.override_tags(overrides)}
    if status == "FAILED":
        tags["error"] = "ValueError: out of memory"
    return ChildRun(f"run{job}-{start_ms}", f"job{job}", status, tags, {}, start_ms, start_ms + 1000,
                    {"val_mean_iou": list(ious), "val_mean_dice": list(ious)})


def test_overrides_with_spaces_and_equals_signs_stay_whole():
    # A value may hold spaces and "=" (a quoted run name); joined with spaces, the overrides can't be split back.
    children = [
        _child(0, ["tracking.run_name=lr sweep a=1", "optimizer.learning_rate=0.001"], "k0", 1),
        _child(1, ["tracking.run_name=lr sweep a=1", "optimizer.learning_rate=0.01"], "k1", 2),
    ]
    table = summary.rows(children)
    assert [r["combination"] for r in table] == [{"optimizer.learning_rate": "0.001"}, {"optimizer.learning_rate": "0.01"}]


def test_a_job_failed_then_rerun_counts_once_by_its_latest_run():
    children = [
        _child(0, ["model.base_filters=8"], "k0", 1, ious=(0.4,)),
        _child(1, ["model.base_filters=16"], "k1", 2, status="FAILED", ious=()),
        _child(1, ["model.base_filters=16"], "k1", 50, ious=(0.3, 0.6)),  # the same job re-run by the resumed sweep
    ]
    table = summary.rows(children)
    assert [(r["job"], r["status"], r["val_mean_iou"]) for r in table] == [(0, "FINISHED", 0.4), (1, "FINISHED", 0.6)]
    assert summary.best(table, "val_mean_iou")["job"] == 1


def test_csv_output_is_plain_csv_header_first(tmp_path):
    import subprocess
    import sys

    from seglab import tracking
    from seglab.tracking import sweeps, tags
    from tests.conftest import ROOT

    uri = f"sqlite:///{tmp_path}/m.db"
    parent = sweeps.start_parent_run(uri, "e", "a-sweep", {tags.SWEEP: tags.SWEEP_PARENT}, {})
    for job, iou in enumerate((0.4, 0.6)):
        job_tags = {tags.HYDRA_JOB_NUM: str(job), **lifecycle.override_tags([f"model.base_filters={8 * (job + 1)}"])}
        with tracking.Run(uri, "e", f"job{job}", job_tags, parent_run_id=parent) as run:
            run.log_epoch({"val_mean_iou": iou, "val_mean_dice": iou}, 0)
    done = subprocess.run([sys.executable, "-m", "seglab.report", "a-sweep", "--tracking-uri", uri, "--format", "csv", "--no-log"],
                          cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    header, *table = list(csv.reader(done.stdout.splitlines()))
    assert header == list(summary.COLUMNS)
    assert [(row[0], row[3]) for row in table] == [("1", "0.6"), ("0", "0.4")]  # best first
    assert f"sweep {parent}: 2 jobs, 2 finished" in done.stderr



def test_the_output_files_suffix_picks_its_format_and_a_suffix_the_report_cannot_write_is_refused():
    """`--output report.pdf` once got the text table under a .pdf name (issue 32)."""
    from seglab.cli.report import output_format
    from seglab.config.check import ConfigError

    assert [output_format(Path(name), "text") for name in ("r.csv", "r.MD", "r.txt", "r")] == ["csv", "markdown", "text", "text"]
    assert output_format(Path("r.txt"), "csv") == "csv"  # a .txt or bare name: --format's
    assert output_format(Path("sweep-2024.05.01"), "markdown") == "markdown"  # a dotted name is not a file type
    with pytest.raises(ConfigError, match=r"--output=out/r\.pdf: .* not \.pdf; name the file r\.md, r\.csv or r\.txt"):
        output_format(Path("out/r.pdf"), "text")

# --- the test split: paired bootstrap intervals (seglab.engine.compare) ---------------------------------------------

def _image(tp_truth_pred: list[tuple[int, int, int]]) -> list[list[int]]:
    return [list(c) for c in tp_truth_pred]


def test_pooled_counts_read_back_from_a_per_image_table_give_the_split_mean_iou():
    from seglab.engine import compare, per_image
    from seglab.metrics import scores

    rng = np.random.default_rng(3)
    matrices = rng.integers(0, 40, size=(7, 3, 3))
    matrices[2, 1, :] = matrices[2, :, 1] = 0  # class 1 in neither truth nor prediction of image 2: NaN in the table
    matrices[5] = 0  # an image with no labelled pixel
    names, counts = compare.counts_from_table(per_image.table(per_image.PerImage(matrices), ["bg", "cat", "edge"]))
    assert names == [str(i) for i in range(7)]
    assert np.array_equal(counts[..., 0], np.diagonal(matrices, axis1=1, axis2=2))  # TP, truth, prediction exact again
    assert np.array_equal(counts[..., 1], matrices.sum(2)) and np.array_equal(counts[..., 2], matrices.sum(1))
    assert compare.mean_iou(counts.sum(0)) == pytest.approx(scores(matrices.sum(0))["mean_iou"], abs=1e-12)


def test_bootstrap_of_a_hand_case_two_images():
    from seglab.engine import compare

    # Image a: both classes right (mIoU 1); image b: both wrong (0).  Pooled: each class 1 TP of a union of 3.
    a, b = _image([(1, 1, 1), (1, 1, 1)]), _image([(0, 1, 1), (0, 1, 1)])
    result = compare.paired_bootstrap(np.array([[a, b]]))
    assert result.mean_iou[0] == pytest.approx(1 / 3)
    # Draws are {a, a} (mIoU 1), {a, b} (1/3) or {b, b} (0), a quarter of them each of the pure ones: the 2.5 and 97.5
    # percentiles are 0 and 1 exactly.
    assert (result.low[0], result.high[0]) == (0.0, 1.0)
    assert result.best == 0 and not result.distinguishable[0]
    assert (compare.draws(5, resamples=40).sum(1) == 5).all()


def test_identical_jobs_are_not_distinguishable_and_clearly_different_ones_are():
    from seglab.engine import compare

    rng = np.random.default_rng(0)
    truth = rng.integers(50, 100, size=(30, 3)).astype(float)
    hardness = rng.uniform(0.5, 0.95, size=(30, 1))  # how much of each image's truth a job finds: some images are hard
    good = np.stack([np.rint(hardness * truth), truth, truth], axis=-1)  # prediction as large as the truth
    worse = np.stack([np.rint((hardness - 0.05) * truth), truth, truth], axis=-1)  # 5 points less on every image
    same = compare.paired_bootstrap(np.stack([good, good]))
    assert same.diff_low.tolist() == same.diff_high.tolist() == [0.0, 0.0] and not same.distinguishable.any()
    assert same.low[0] == same.low[1] and same.high[0] == same.high[1]
    apart = compare.paired_bootstrap(np.stack([worse, good]))
    assert apart.best == 1 and apart.distinguishable.tolist() == [True, False] and apart.diff_low[0] > 0
    # Paired: every draw moves both jobs alike, so the difference is told apart though the jobs' own intervals overlap.
    assert apart.low[1] < apart.high[0]


def test_jobs_tested_on_other_images_get_no_intervals_and_one_line_saying_why():
    from seglab.engine import compare

    counts = np.ones((2, 1, 3))
    assert compare.align([(["x", "y"], counts), (["y", "x"], counts[::-1])])[0].shape == (2, 2, 1, 3)
    aligned, why = compare.align([(["x", "y"], counts), (["x", "z"], counts)])
    assert aligned is None and "not tested on the same images" in why and "\n" not in why


def test_unnamed_images_read_in_no_fixed_order_get_no_intervals(compose_cfg):
    """deterministic=false and a source that names no image: the per-image rows are marked unordered (by the table the
    scoring writes) and the report gives no intervals, saying why; before, the images were paired by position, which
    in another order pairs other images."""
    import tensorflow as tf

    from seglab.config.inference import InferenceOptions
    from seglab.data import Splits
    from seglab.engine import compare, evaluate, per_image

    matrices = np.ones((2, 3, 3), np.int64)
    for deterministic, first in ((True, "0"), (False, f"{compare.UNORDERED}0")):
        cfg = compose_cfg("data=shapes", f"deterministic={str(deterministic).lower()}")
        test = tf.data.Dataset.from_tensors((np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32)))
        split, _, _ = evaluate.scoring(cfg, Splits(train=None, val=None, test=test), "test", None, InferenceOptions())
        rows = per_image.table(per_image.PerImage(matrices), ["a", "b", "c"], split.image_names, split.ordered)
        assert rows["image"][0] == first
    names, counts = compare.counts_from_table(rows)
    aligned, why = compare.align([(names, counts), (names, counts)])
    assert aligned is None and "deterministic=true" in why and "\n" not in why


def _eval(tables: dict, job: str, tp: float, names=("a", "b", "c", "d")) -> EvalRun:
    pixels = 100
    columns = {"image": list(names), "index": list(range(len(names))), "pixels": [pixels] * len(names)}
    iou = tp / (2 * pixels - tp)
    columns.update({"iou_x": [iou] * len(names), "true_x": [1.0] * len(names), "pred_x": [1.0] * len(names)})
    tables[job] = EvalRun(f"eval-{job}", iou, columns)
    return tables[job]


def test_tested_jobs_get_the_interval_columns_and_the_mark_and_untested_ones_keep_theirs():
    children = [_child(job, [f"model.base_filters={2 ** job}"], f"k{job}", job) for job in range(4)]
    evaluations: dict = {}
    for job, tp in ((0, 90.0), (1, 90.0), (2, 40.0)):  # job 3 has no test evaluation
        _eval(evaluations, f"run{job}-{job}", tp)
    table = summary.rows(children)
    note = summary.add_test_scores(table, evaluations)
    assert note.startswith("test: 4 images; 95% intervals: percentiles of 2000 paired bootstrap resamples")
    table = summary.sort(table, "test_mean_iou")
    assert [(r["job"], r["vs_best"]) for r in table] == [(0, "best"), (1, "~best"), (2, "worse"), (3, None)]
    assert table[0]["test_95ci"] == f"[{90 / 110:.4f}, {90 / 110:.4f}]"  # every image alike: no spread
    text = summary.to_text(table).splitlines()
    assert text[0].split()[:6] == ["job", "status", "overrides", "test_mean_iou", "test_95ci", "vs_best"]
    assert summary.to_csv(table).splitlines()[0].startswith("job,status,overrides,test_mean_iou,test_ci_low,test_ci_high,vs_best,")
    untested = summary.rows(children)
    assert summary.add_test_scores(untested, {}) == "" and summary.to_csv(untested).splitlines()[0] == ",".join(summary.COLUMNS)
    _eval(evaluations, "run1-1", 90.0, names=("a", "b", "c", "e"))
    assert "not tested on the same images" in summary.add_test_scores(summary.rows(children), evaluations)


@pytest.mark.slow
def test_a_real_sweep_evaluated_on_its_test_split_is_reported_with_intervals_and_a_chart(tmp_path):
    from mlflow import MlflowClient

    from seglab.engine import compare
    from seglab.tracking import sweeps
    from tests.conftest import TINY, run_cli, run_module

    uri = f"sqlite:///{tmp_path}/m.db"
    data = ("data.image_size=32", "data.source.train_size=16", "data.source.val_size=8", "data.source.test_size=12")
    run_cli("--multirun", *TINY, *data, "trainer.epochs=1", "trainer.mask_samples=0", "model.base_filters=2,4",
            f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun", cwd=tmp_path, timeout=600)
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get(keys.SWEEP) == keys.SWEEP_PARENT]
    jobs = [r for r in runs if r.data.tags.get(keys.PARENT_RUN) == parent.info.run_id]
    for job in jobs:
        done = run_module("seglab.evaluate", f"model_uri=runs:/{job.info.run_id}/model", *data, f"tracking.uri={uri}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    logged = {r.data.tags[keys.TRAINING_RUN]: r.data.metrics["test_mean_iou"] for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.`{keys.SPLIT}` = 'test'")}

    done = run_module("seglab.report", parent.info.run_id, "--tracking-uri", uri, "--format", "csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sweep {parent.info.run_id}: 2 jobs, 2 finished, 2 tested" in done.stderr
    assert "test: 12 images; 95% intervals: percentiles of 2000 paired bootstrap resamples" in done.stderr
    table = list(csv.DictReader(done.stdout.splitlines()))
    assert [float(r["test_mean_iou"]) for r in table] == sorted((logged[r["run_id"]] for r in table), reverse=True)
    assert [r["vs_best"] for r in table][0] == "best" and table[1]["vs_best"] in ("~best", "worse")
    for r in table:
        assert float(r["test_ci_low"]) <= float(r["test_mean_iou"]) <= float(r["test_ci_high"])
        assert float(r["test_ci_low"]) < float(r["test_ci_high"])  # 12 different images: a spread
    artifacts = {a.path: a for a in client.list_artifacts(parent.info.run_id)}
    assert {"test_mean_iou.png", "report.csv", "report.md"} <= set(artifacts) and artifacts["test_mean_iou.png"].file_size > 0
    assert "~best: not distinguishable from the best" in Path(client.download_artifacts(parent.info.run_id, "report.md", str(tmp_path))).read_text()
    # The tables as MLflow gives them back hold the exact counts: pooled, they give the logged test mIoU.
    for run_id, found in sweeps.latest_test_evaluations(uri, list(logged)).items():
        assert compare.mean_iou(compare.counts_from_table(found.table)[1].sum(0)) == pytest.approx(logged[run_id], abs=1e-9)


@pytest.mark.slow
def test_a_sweep_whose_jobs_score_their_own_test_split_is_reported_with_intervals_without_logged_models(tmp_path):
    """trainer.score_test (+experiment=compare_on_my_data): no model logged, no seglab.evaluate, and still the
    report's test intervals; and a job's own test scores are those seglab.evaluate gives its logged model."""
    from mlflow import MlflowClient

    from tests.conftest import TINY, run_cli, run_module

    uri = f"sqlite:///{tmp_path}/m.db"
    data = ("data.image_size=32", "data.source.train_size=16", "data.source.val_size=8", "data.source.test_size=12")
    run_cli("--multirun", *TINY, *data, "trainer.epochs=1", "trainer.mask_samples=0", "model.base_filters=2,4",
            "trainer.score_test=true", "tracking.log_model=false", f"tracking.uri={uri}",
            f"hydra.sweep.dir={tmp_path}/multirun", cwd=tmp_path, timeout=600)
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get(keys.SWEEP) == keys.SWEEP_PARENT]
    jobs = [r for r in runs if r.data.tags.get(keys.PARENT_RUN) == parent.info.run_id]
    assert len(jobs) == 2 and not [r for r in runs if r.data.tags.get(keys.SPLIT)]  # no evaluation run
    for job in jobs:
        logged = {a.path for a in client.list_artifacts(job.info.run_id)}
        assert {"per_image_test.json", "confusion_matrix_test.json", "confusion_matrix.json", "per_image_val.json"} <= logged
        assert "model" not in logged

    done = run_module("seglab.report", parent.info.run_id, "--tracking-uri", uri, "--format", "csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sweep {parent.info.run_id}: 2 jobs, 2 finished, 2 tested" in done.stderr
    assert "test: 12 images; 95% intervals" in done.stderr
    table = list(csv.DictReader(done.stdout.splitlines()))
    own = {job.info.run_id: job.data.metrics["test_mean_iou"] for job in jobs}
    assert sorted(float(r["test_mean_iou"]) for r in table) == sorted(own.values())
    assert table[0]["vs_best"] == "best" and all(float(r["test_ci_low"]) < float(r["test_ci_high"]) for r in table)

    # One training that logs its model too: seglab.evaluate scores that model on the test split exactly as the
    # training scored it.
    run_cli(*TINY, *data, "trainer.epochs=1", "trainer.mask_samples=0", "trainer.score_test=true", f"tracking.uri={uri}",
            cwd=tmp_path, timeout=600)
    (trained,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                  if r.info.run_id not in own and r.info.run_id != parent.info.run_id]
    done = run_module("seglab.evaluate", f"model_uri=runs:/{trained.info.run_id}/model", *data, f"tracking.uri={uri}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (evaluation,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                       filter_string=f"tags.`{keys.TRAINING_RUN}` = '{trained.info.run_id}'")
    for key, value in evaluation.data.metrics.items():
        if key.startswith("test_"):
            assert trained.data.metrics[key] == pytest.approx(value, abs=1e-9), key


def test_score_test_on_data_without_a_test_split_is_refused_before_the_run_opens(tmp_path):
    """Not after every epoch of every job of a sweep: one line saying how to give the data a test split, no store."""
    from tests.conftest import TINY, run_cli

    done = run_cli(*TINY, "data.source.test_size=0", "trainer.score_test=true", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                   cwd=tmp_path, check=False)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "trainer.score_test=true, but data=shapes has no test split" in last and "trainer.score_test=false" in last, last
    assert not (tmp_path / "m.db").exists()

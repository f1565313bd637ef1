"""The sweep report's rows from child runs as the tracking module returns them (plain values)."""

from __future__ import annotations

from seglab.cli import report
from seglab.engine import lifecycle
from seglab.tracking import tags as keys
from seglab.tracking.sweeps import ChildRun


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
    table = report.rows(children)
    assert [r["combination"] for r in table] == [{"optimizer.learning_rate": "0.001"}, {"optimizer.learning_rate": "0.01"}]


def test_a_job_failed_then_rerun_counts_once_by_its_latest_run():
    children = [
        _child(0, ["model.base_filters=8"], "k0", 1, ious=(0.4,)),
        _child(1, ["model.base_filters=16"], "k1", 2, status="FAILED", ious=()),
        _child(1, ["model.base_filters=16"], "k1", 50, ious=(0.3, 0.6)),  # the same job re-run by the resumed sweep
    ]
    table = report.rows(children)
    assert [(r["job"], r["status"], r["val_mean_iou"]) for r in table] == [(0, "FINISHED", 0.4), (1, "FINISHED", 0.6)]
    assert report.best(table, "val_mean_iou")["job"] == 1


def test_csv_output_is_plain_csv_header_first(tmp_path):
    import csv
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
    assert header == list(report.COLUMNS)
    assert [(row[0], row[3]) for row in table] == [("1", "0.6"), ("0", "0.4")]  # best first
    assert f"sweep {parent}: 2 jobs, 2 finished" in done.stderr

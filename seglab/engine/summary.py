"""A sweep's jobs as a table: one row per job (its overrides, best validation scores, epochs, time, throughput),
ranked, and, where the jobs were scored on the test split, their test mean IoU with the paired-bootstrap interval
(seglab.engine.compare).  Shared by the sweep's end (its summary on the parent run) and `python -m seglab.report`."""

from __future__ import annotations

import csv
import io
import math
import textwrap
from pathlib import Path
from typing import Any, Iterable

from matplotlib.figure import Figure

from seglab.engine import compare, lifecycle
from seglab.tracking import tags
from seglab.tracking.sweeps import TEST_TABLE, ChildRun, EvalRun
from seglab.util import objective

COLUMNS = ("job", "status", "overrides", "val_mean_iou", "val_mean_dice", "epochs", "wall_s", "images_per_s", "run_id", "error")
METRIC_COLUMNS = ("test_mean_iou", "val_mean_iou", "val_mean_dice", "epochs", "wall_s", "images_per_s")
ERROR_CHARS = 80
# Only when some job has a test evaluation, after `overrides`: the interval in one cell for reading, in two for a CSV.
TEST_COLUMNS = ("test_mean_iou", "test_95ci", "vs_best")
TEST_CSV_COLUMNS = ("test_mean_iou", "test_ci_low", "test_ci_high", "vs_best")
BEST, NOT_DISTINGUISHABLE, WORSE, DIFFERENT = "best", "~best", "worse", "differs"
TEST_CHART = "test_mean_iou.png"
TITLE_CHARS = 100  # per line of the chart's title (add_test_scores' note)
LEGEND = (f"{NOT_DISTINGUISHABLE}: not distinguishable from the best (the 95% interval of best - job holds 0); "
          f"{WORSE}: below the best (that interval lies above 0)")


def _best(values: list[float], metric: str) -> float | None:
    return objective.best((v for v in values if math.isfinite(v)), metric)


def latest_per_config(children: Iterable[ChildRun]) -> list[ChildRun]:
    """A re-run sweep starts a new run for a job that failed before: the job counts once, by its latest
    run (runs of one configuration share their run key)."""
    latest: dict[str, ChildRun] = {}
    for child in sorted(children, key=lambda c: c.start_ms):
        latest[child.tags.get(tags.RUN_KEY) or child.run_id] = child
    return list(latest.values())


def rows(children: Iterable[ChildRun], optimize_metric: str = "val_mean_iou") -> list[dict[str, Any]]:
    """One dict per job, ordered by job number; `combination` holds only the overrides that vary."""
    table = []
    for child in latest_per_config(children):
        history = child.history
        table.append({
            "job": int(child.tags.get(tags.HYDRA_JOB_NUM, -1)),
            "status": child.status,
            "val_mean_iou": _best(history.get("val_mean_iou", []), "val_mean_iou"),
            "val_mean_dice": _best(history.get("val_mean_dice", []), "val_mean_dice"),
            "epochs": len(history.get("val_mean_iou", [])),
            "wall_s": round((child.end_ms - child.start_ms) / 1000, 1) if child.end_ms else None,
            "images_per_s": round(history["train_images_per_second"][-1], 1) if history.get("train_images_per_second") else None,
            "objective": _best(history.get(optimize_metric, []), optimize_metric),
            "run_id": child.run_id,
            "error": child.tags.get(tags.ERROR, "")[:ERROR_CHARS],
            "_overrides": lifecycle.overrides_of(child.tags),
        })
    all_keys = {k for r in table for k in r["_overrides"]}
    varying = sorted(k for k in all_keys if len({r["_overrides"].get(k) for r in table}) > 1)
    for r in table:
        r["combination"] = {k: r["_overrides"].get(k, "(default)") for k in varying}
        r["overrides"] = " ".join(f"{k}={v}" for k, v in r["combination"].items()) or "(same)"
        del r["_overrides"]
    return sorted(table, key=lambda r: r["job"])


def best(table: list[dict[str, Any]], optimize_metric: str) -> dict[str, Any] | None:
    finished = [r for r in table if r["status"] == "FINISHED" and r["objective"] is not None]
    if not finished:
        return None
    top = objective.best((r["objective"] for r in finished), optimize_metric)
    return next(r for r in finished if r["objective"] == top)


SORTABLE = (*COLUMNS, "objective", "test_mean_iou")


def sort(table: list[dict[str, Any]], column: str, ascending: bool = False) -> list[dict[str, Any]]:
    """Rows by `column`; rows without a value (failed jobs, jobs not tested) last either way."""
    if column not in SORTABLE:
        raise SystemExit(f"--sort {column!r} is not a column; choose one of {', '.join(SORTABLE)}")
    present = [r for r in table if r.get(column) is not None]
    missing = [r for r in table if r.get(column) is None]
    return sorted(present, key=lambda r: r[column], reverse=not ascending) + missing


def tested(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in table if r.get("test_mean_iou") is not None]


def add_test_scores(table: list[dict[str, Any]], evaluations: dict[str, EvalRun]) -> str:
    """Give each row (in place) its job's test mean IoU (`evaluations`: training run id -> its test
    evaluation) and, when every tested job's per-image table covers the same images, its 95 % paired
    bootstrap interval and how it stands to the best (`vs_best`).  One line saying what was done or why
    there are no intervals; "" when no job was tested."""
    for r in table:
        found = evaluations.get(r["run_id"])
        r.update(test_mean_iou=found.mean_iou if found else None, test_ci_low=None, test_ci_high=None, test_95ci=None,
                 vs_best=None)
    rows_tested = tested(table)
    if not rows_tested:
        return ""
    missing = [r["job"] for r in rows_tested if evaluations[r["run_id"]].table is None]
    if missing:
        return f"test: job {', '.join(map(str, missing))} has no per-image table ({TEST_TABLE}): no intervals"
    counts, why_not = compare.align([compare.counts_from_table(evaluations[r["run_id"]].table) for r in rows_tested])
    if counts is None:
        return f"test: {why_not}"
    result = compare.paired_bootstrap(counts)
    for i, r in enumerate(rows_tested):
        r.update(test_ci_low=float(result.low[i]), test_ci_high=float(result.high[i]), vs_best=_standing(result, i),
                 test_95ci=f"[{result.low[i]:.4f}, {result.high[i]:.4f}]")
    return f"test: {result.images} images; 95% intervals: percentiles of {result.resamples} paired bootstrap resamples of them"


def _standing(result: compare.Comparison, job: int) -> str:
    """`vs_best` of a job.  A job with a lower mIoU than the best whose interval of best - job lies below 0 is
    possible in principle (percentile intervals are not centred on the estimate): it `differs`."""
    if job == result.best:
        return BEST
    if not result.distinguishable[job]:
        return NOT_DISTINGUISHABLE
    return WORSE if result.diff_low[job] > 0 else DIFFERENT


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if column in ("wall_s", "images_per_s") else f"{value:.4f}"
    return str(value)


def _header(optimize_metric: str, table: list[dict[str, Any]], test_columns: tuple[str, ...] = TEST_COLUMNS) -> list[str]:
    header = list(COLUMNS) if optimize_metric in COLUMNS else [*COLUMNS[:5], "objective", *COLUMNS[5:]]
    if tested(table):
        at = header.index("overrides") + 1
        header[at:at] = test_columns
    return header


def to_markdown(table: list[dict[str, Any]], optimize_metric: str = "val_mean_iou") -> str:
    header = _header(optimize_metric, table)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if h in METRIC_COLUMNS else "---" for h in header) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(h), h).replace("|", "\\|") for h in header) + " |" for r in table]
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict[str, Any]], optimize_metric: str = "val_mean_iou") -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = _header(optimize_metric, table, TEST_CSV_COLUMNS)
    writer.writerow(header)
    writer.writerows([["" if r.get(h) is None else r.get(h) for h in header] for r in table])
    return out.getvalue()


def to_text(table: list[dict[str, Any]], optimize_metric: str = "val_mean_iou") -> str:
    header = _header(optimize_metric, table)
    cells = [header] + [[_cell(r.get(h), h) for h in header] for r in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells) + "\n"


def plot_objective(table: list[dict[str, Any]], optimize_metric: str, path: Path) -> Path:
    """A bar per job: the objective of each combination; failed jobs are marked, not left out."""

    labels = [f"{r['job']}: {r['overrides']}" for r in table]
    values = [r["objective"] if r["objective"] is not None and r["status"] == "FINISHED" else 0.0 for r in table]
    colors = ["tab:blue" if r["status"] == "FINISHED" else "tab:red" for r in table]
    fig = Figure(figsize=(8, 1.2 + 0.35 * max(len(table), 1)))
    ax = fig.subplots()
    ax.barh(range(len(table)), values, color=colors)
    ax.set_yticks(range(len(table)), labels, fontsize=8)
    for i, r in enumerate(table):
        if r["status"] != "FINISHED":
            ax.text(0, i, f" {r['status']}", va="center", fontsize=8, color="tab:red")
    ax.invert_yaxis()
    ax.set_xlabel(f"best {optimize_metric}")
    ax.set_title("objective per job (red: failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_test(table: list[dict[str, Any]], note: str, path: Path) -> Path:
    """A point per tested job, best first: its test mean IoU with its 95 % interval as a bar, coloured and
    labelled by how it stands to the best (`vs_best`; no bars, grey, when there are no intervals)."""
    rows_tested = sorted(tested(table), key=lambda r: r["test_mean_iou"], reverse=True)
    colors = {BEST: "tab:blue", NOT_DISTINGUISHABLE: "tab:green"}  # the others grey
    fig = Figure(figsize=(8, 1.4 + 0.35 * len(rows_tested) + 0.15 * note.count("\n")))
    ax = fig.subplots()
    for i, r in enumerate(rows_tested):
        point = r["test_mean_iou"]
        error = None if r["test_ci_low"] is None else [[point - r["test_ci_low"]], [r["test_ci_high"] - point]]
        ax.errorbar(point, i, xerr=error, fmt="o", color=colors.get(r["vs_best"], "tab:gray"), capsize=4)
    labels = [f"{r['job']}: {r['overrides']}" + (f"  [{r['vs_best']}]" if r["vs_best"] else "") for r in rows_tested]
    ax.set_yticks(range(len(rows_tested)), labels, fontsize=8)
    for tick, r in zip(ax.get_yticklabels(), rows_tested):
        tick.set_color(colors.get(r["vs_best"], "black"))
    ax.set_ylim(len(rows_tested) - 0.5, -0.5)
    ax.set_xlabel("test mean IoU (95% paired bootstrap interval)")
    fig.suptitle("\n".join(textwrap.fill(line, TITLE_CHARS) for line in note.splitlines()), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path

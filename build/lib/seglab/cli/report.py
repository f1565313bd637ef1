"""`python -m seglab.report SWEEP`: the jobs of a sweep side by side, as a table.

SWEEP is the parent run id of a sweep, an MLflow experiment name (its latest sweep) or a sweep's run
name (its latest run so named, e.g. an experiment preset's name).  The table has one row per job:
the overrides that differ between the jobs, best validation mean IoU and Dice over the epochs,
epochs run, wall time and training throughput.  It is printed (text, Markdown or CSV), optionally
written to a file, and logged to the parent run as `report.md` and `report.csv`.
"""

# Lazy imports: MLflow loads once the arguments are parsed: `--help` and a mistake answer at once.

from __future__ import annotations

import csv
import io
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from matplotlib.figure import Figure

from seglab import console, errors
from seglab.config import preflight
from seglab.engine import lifecycle
from seglab.tracking import tags
from seglab.tracking.sweeps import ChildRun
from seglab.util import objective

COLUMNS = ("job", "status", "overrides", "val_mean_iou", "val_mean_dice", "epochs", "wall_s", "images_per_s", "run_id", "error")
METRIC_COLUMNS = ("val_mean_iou", "val_mean_dice", "epochs", "wall_s", "images_per_s")
ERROR_CHARS = 80


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


SORTABLE = (*COLUMNS, "objective")


def sort(table: list[dict[str, Any]], column: str, ascending: bool = False) -> list[dict[str, Any]]:
    """Rows by `column`; rows without a value (failed jobs) last either way."""
    if column not in SORTABLE:
        raise SystemExit(f"--sort {column!r} is not a column; choose one of {', '.join(SORTABLE)}")
    present = [r for r in table if r[column] is not None]
    missing = [r for r in table if r[column] is None]
    return sorted(present, key=lambda r: r[column], reverse=not ascending) + missing


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if column in ("wall_s", "images_per_s") else f"{value:.4f}"
    return str(value)


def _header(optimize_metric: str) -> list[str]:
    return list(COLUMNS) if optimize_metric in COLUMNS else [*COLUMNS[:5], "objective", *COLUMNS[5:]]


def to_markdown(table: list[dict[str, Any]], optimize_metric: str = "val_mean_iou") -> str:
    header = _header(optimize_metric)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if h in METRIC_COLUMNS else "---" for h in header) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(h), h).replace("|", "\\|") for h in header) + " |" for r in table]
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict[str, Any]], optimize_metric: str = "val_mean_iou") -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = _header(optimize_metric)
    writer.writerow(header)
    writer.writerows([["" if r.get(h) is None else r.get(h) for h in header] for r in table])
    return out.getvalue()


def to_text(table: list[dict[str, Any]], optimize_metric: str = "val_mean_iou") -> str:
    header = _header(optimize_metric)
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


FORMATS = {"text": to_text, "markdown": to_markdown, "csv": to_csv}


def main(argv: list[str] | None = None) -> None:
    parser = errors.argument_parser(prog="python -m seglab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="parent run id, MLflow experiment name (its latest sweep), or a sweep's run name")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--sort", default="objective", choices=SORTABLE, metavar="COLUMN", help=f"column to sort by (default: the sweep's optimize_metric); one of {', '.join(SORTABLE)}")
    parser.add_argument("--ascending", action="store_true", help="smallest first (default: largest first; best first for the objective)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="text")
    parser.add_argument("--output", type=Path, help="also write the table to this file (.csv or .md picks the format)")
    parser.add_argument("--no-log", action="store_true", help="do not log report.md / report.csv to the parent run")
    parser.add_argument("--verbose", action="store_true", help="MLflow's own notices too")
    args = parser.parse_args(argv)
    console.quiet(args.verbose)

    preflight.check_store(args.tracking_uri, must_exist=True, key="--tracking-uri")
    if args.output:
        preflight.writable_file(args.output, "--output")
    from seglab.tracking import sweeps as sweep_runs

    parent = sweep_runs.find_parent_run(args.tracking_uri, args.sweep)
    children = sweep_runs.child_runs(args.tracking_uri, parent)
    metric = next((c.params["optimize_metric"] for c in children if "optimize_metric" in c.params), "val_mean_iou")
    table = rows(children, metric)
    best_first_ascending = args.sort == "objective" and objective.minimized(metric)
    table = sort(table, args.sort, args.ascending or best_first_ascending)
    # The summary goes before the table, except into a CSV: that stays plain CSV, header first (the summary to stderr).
    summary = sys.stderr if args.format == "csv" else sys.stdout
    summary.write(f"sweep {parent}: {len(table)} jobs, {sum(r['status'] == 'FINISHED' for r in table)} finished\n")
    sys.stdout.write(FORMATS[args.format](table, metric))
    if args.output:
        fmt = {".csv": "csv", ".md": "markdown"}.get(args.output.suffix, args.format)
        args.output.write_text(FORMATS[fmt](table, metric))
    if not args.no_log:
        sweep_runs.log_to_run(args.tracking_uri, parent, texts={"report.md": to_markdown(table, metric), "report.csv": to_csv(table, metric)})


def cli() -> None:
    """`python -m seglab.report` (seglab/report.py)."""
    errors.main(main, prog="seglab.report")

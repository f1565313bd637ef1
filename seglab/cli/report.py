"""`python -m seglab.report SWEEP`: the jobs of a sweep side by side, as a table.

SWEEP is the parent run id of a sweep, an MLflow experiment name (its latest sweep) or a sweep's run
name (its latest run so named, e.g. an experiment preset's name).  The table has one row per job:
the overrides that differ between the jobs, best validation mean IoU and Dice over the epochs,
epochs run, wall time and training throughput.  It is printed (text, Markdown or CSV), optionally
written to a file, and logged to the parent run as `report.md` and `report.csv`.

Jobs whose model was scored on the test split (`python -m seglab.evaluate model_uri=runs:/<job's run
id>/model ...`) are ranked by their test mean IoU, with its 95 % interval from a paired bootstrap over
the test images and a mark for the jobs not distinguishable from the best (seglab.engine.compare);
that comparison is also drawn and logged to the parent run as `test_mean_iou.png`.
"""

# Lazy imports: MLflow loads once the arguments are parsed: `--help` and a mistake answer at once.

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from seglab import console, errors
from seglab.config import preflight
from seglab.config import tracking as tracking_config
from seglab.config.check import ConfigError
from seglab.engine import claim
from seglab.engine.summary import (LEGEND, SORTABLE, TEST_CHART, add_test_scores, plot_test, rows, sort,
                                   tested, to_csv, to_markdown, to_text)
from seglab.util import objective

FORMATS = {"text": to_text, "markdown": to_markdown, "csv": to_csv}
# The format an --output file's suffix picks; any other suffix (.txt, none, `sweep-2024.05.01`) gets --format's.
SUFFIX_FORMATS = {".csv": "csv", ".md": "markdown"}
# Suffixes of files that are not text, which the report cannot write (it wrote its text table under such a name).
NOT_TEXT = {".pdf", ".html", ".htm", ".png", ".jpg", ".jpeg", ".svg", ".xlsx", ".xls", ".ods", ".docx", ".doc", ".odt",
            ".json", ".yaml", ".yml", ".tex", ".parquet", ".zip"}


def main(argv: list[str] | None = None) -> None:
    parser = errors.argument_parser(prog="python -m seglab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="parent run id, MLflow experiment name (its latest sweep), or a sweep's run name")
    parser.add_argument("--tracking-uri", default=tracking_config.default_uri(),
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--sort", choices=SORTABLE, metavar="COLUMN",
                        help="column to sort by (default: test_mean_iou when a job was evaluated on the test split, else "
                             f"the sweep's optimize_metric); one of {', '.join(SORTABLE)}")
    parser.add_argument("--ascending", action="store_true", help="smallest first (default: largest first; best first for the objective)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="text")
    parser.add_argument("--output", type=Path,
                        help="also write the table to this file (.csv or .md picks the format; .txt or none: --format's)")
    parser.add_argument("--no-log", action="store_true",
                        help=f"do not log report.md, report.csv and {TEST_CHART} to the parent run")
    parser.add_argument("--verbose", action="store_true", help="MLflow's own notices too")
    args = parser.parse_args(argv)
    console.quiet(args.verbose)

    preflight.check_store(args.tracking_uri, must_exist=True, key=tracking_config.uri_key(args.tracking_uri, "--tracking-uri"))
    if args.output:
        preflight.writable_file(args.output, "--output")
        output_format(args.output, args.format)
    from seglab.tracking import sweeps as sweep_runs

    parent = sweep_runs.find_parent_run(args.tracking_uri, args.sweep)
    children = sweep_runs.child_runs(args.tracking_uri, parent)
    if end_dead(args.tracking_uri, [parent, *(c.run_id for c in children if c.status == "RUNNING")]):
        children = sweep_runs.child_runs(args.tracking_uri, parent)  # the table shows them KILLED
    metric = next((c.params["optimize_metric"] for c in children if "optimize_metric" in c.params), "val_mean_iou")
    table = rows(children, metric)
    finished = [r["run_id"] for r in table if r["status"] == "FINISHED"]
    note = add_test_scores(table, sweep_runs.latest_test_evaluations(args.tracking_uri, finished))
    column = args.sort or ("test_mean_iou" if note else "objective")
    best_first_ascending = column == "objective" and objective.minimized(metric)
    table = sort(table, column, args.ascending or best_first_ascending)
    # The summary goes before the table, except into a CSV: that stays plain CSV, header first (the summary to stderr).
    summary = sys.stderr if args.format == "csv" else sys.stdout
    summary.write(f"sweep {parent}: {len(table)} jobs, {sum(r['status'] == 'FINISHED' for r in table)} finished"
                  f"{f', {len(tested(table))} tested' if note else ''}\n")
    sys.stdout.write(FORMATS[args.format](table, metric))
    if note:
        note += f"\n{LEGEND}" if any(r["vs_best"] for r in table) else ""
        summary.write(note + "\n")
    if args.output:
        args.output.write_text(FORMATS[output_format(args.output, args.format)](table, metric))
    if not args.no_log:
        with tempfile.TemporaryDirectory() as tmp:
            chart = {str(plot_test(table, note, Path(tmp) / TEST_CHART)): ""} if note else {}
            markdown = to_markdown(table, metric) + (f"\n{note}\n" if note else "")
            texts = {"report.md": markdown, "report.csv": to_csv(table, metric)}
            sweep_runs.log_to_run(args.tracking_uri, parent, texts=texts, files=chart)


def output_format(output: Path, default: str) -> str:
    """The format --output is written in; a suffix the report cannot write (`report.pdf`) is refused, not filled with text."""
    if output.suffix.lower() in NOT_TEXT:
        raise ConfigError(f"--output={output}: seglab.report writes text, markdown or csv, not {output.suffix}; "
                          f"name the file {output.stem}.md, {output.stem}.csv or {output.stem}.txt.")
    return SUFFIX_FORMATS.get(output.suffix.lower(), default)


def end_dead(uri: str, run_ids: list[str]) -> list[str]:
    """End KILLED those of the sweep's runs that are RUNNING with their process gone (a sweep or job killed with -9),
    as every command that touches a run does (seglab.engine.claim); their ids.  A run on another host is dead after
    its own trainer.heartbeat_timeout_min (its param; the default for a sweep's parent, which has none)."""
    from seglab.tracking import resumable

    ended = []
    for run in (resumable.get_run(uri, run_id) for run_id in run_ids):
        timeout_min = float(run.params.get("trainer.heartbeat_timeout_min", claim.HEARTBEAT_TIMEOUT_MIN))
        if claim.end_if_dead(uri, run, 60 * timeout_min, "seglab.report"):
            ended.append(run.run_id)
    return ended


def cli() -> None:
    """`python -m seglab.report` (seglab/report.py)."""
    errors.main(main, prog="seglab.report")

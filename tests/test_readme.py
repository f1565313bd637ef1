"""README leads and links; the pages it links exist; its commands are the ones CI runs."""

from __future__ import annotations

import re
import shlex

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, run_cli

README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short():
    assert README.stat().st_size < 15_000


def test_every_docs_page_is_linked_from_readme():
    linked = set(LINK.findall(README.read_text()))
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= linked


def test_relative_links_resolve():
    for page in [README, *(ROOT / "docs").glob("*.md")]:
        for target in LINK.findall(page.read_text()):
            if not re.match(r"\w+://", target):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text()


def quick_start_args() -> list[str]:
    """The arguments of the `python -m seglab` in the first command of README's Quick start, as written there."""
    section = README.read_text().split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    first_command = re.search(r"```bash\n(.*?)\n```", section, re.DOTALL).group(1).splitlines()[0]
    (train,) = [shlex.split(part) for part in first_command.split("&&") if "-m seglab" in part]
    assert train[:3] == ["python", "-m", "seglab"], first_command
    return train[3:]


# What the test adds to the README's command: one epoch of one batch per split (a part-read cache is dropped).
SHORT = ("trainer.epochs=1", "trainer.limit_batches=1", "data.cache=null")


@pytest.mark.slow
def test_the_quick_start_training_command_runs_and_finishes_its_mlflow_run(tmp_path):
    run_cli(*quick_start_args(), *SHORT, cwd=tmp_path)  # exit code 0, or its output in the failure
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # the README: ./mlflow.db where you run it from
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mean_iou")] == [0]

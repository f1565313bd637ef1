"""Every documented Python snippet runs as written: the fenced ```python blocks of README.md, docs/*.md and
experiments/README.md, each page's blocks in order in one fresh interpreter (a reader pastes them into one
session: docs/export.md's LiteRT block uses the `image` its ONNX block read), in a directory that holds what the
text says the reader has: a tiny trained run in ./mlflow.db (MLflow's default store) whose model is registered as
`shapes-unet` with the alias `champion`, its three exports in `exported/`, and `cat.jpg`.

Placeholders are filled as a reader would: `<run id>` with that run's id; `images`, which docs/runs.md's text
describes ("float32 RGB in [0, 1], (N, H, W, 3)"), is given as such.  A block that cannot run on a test machine
(a server of yours, a GPU) says so in an HTML comment on the line before it, `<!-- not run: needs a GPU -->`;
`test_snippets_not_run` lists those, each skipped with its reason.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, TINY, inherited_env, run_cli, run_module

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->$")
REGISTERED = "shapes-unet"  # the name and alias docs/serving.md loads: models:/shapes-unet@champion
ALIAS = "champion"
# What a snippet's text says the reader already has (docs/runs.md: "images: float32 RGB in [0, 1], (N, H, W, 3)").
GIVEN = "import numpy as np\nimages = np.random.default_rng(0).uniform(size=(2, {size}, {size}, 3)).astype(np.float32)\n"


@dataclass
class Snippet:
    where: str  # page:line of the fence
    code: str
    not_run: str | None  # why it is not run, from the comment before it


def snippets(path: Path) -> list[Snippet]:
    found, lines = [], path.read_text().splitlines()
    inside, start, before = False, 0, ""
    for number, line in enumerate(lines, 1):
        if not inside and line.strip() == "```python":
            inside, start, body = True, number, []
            reason = NOT_RUN.match(before.strip())
        elif inside and line.strip() == "```":
            inside = False
            page = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(Snippet(f"{page}:{start}", "\n".join(body), reason.group(1) if reason else None))
        elif inside:
            body.append(line)
        if line.strip():
            before = line
    return found


ALL = [s for path in DOC_FILES for s in snippets(path)]
PAGES = sorted({s.where.split(":")[0] for s in ALL if s.not_run is None})


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory):
    """A reader's directory after the docs' commands: a registered run, its exports, a photo; (directory, run id)."""
    from mlflow import MlflowClient

    cwd = tmp_path_factory.mktemp("reader")
    run_cli(*TINY, "trainer.epochs=1", f"tracking.register_as={REGISTERED}", cwd=cwd)
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (version,) = client.search_model_versions(f"name='{REGISTERED}'")
    client.set_registered_model_alias(REGISTERED, ALIAS, version.version)
    for fmt in ("onnx", "litert", "saved_model"):
        done = run_module("seglab.export", f"model_uri=runs:/{run.info.run_id}/model", f"format={fmt}", "output=exported", cwd=cwd)
        assert done.returncode == 0, done.stderr[-3000:]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(cwd / "cat.jpg")
    return cwd, run.info.run_id


def page_script(page: str, run_id: str) -> str:
    """The page's runnable blocks in order, each after a comment naming where it is, placeholders filled."""
    size = next(a.split("=")[1] for a in TINY if a.startswith("data.image_size="))
    parts = [GIVEN.format(size=size)]
    for snippet in (s for s in ALL if s.where.startswith(f"{page}:") and s.not_run is None):
        parts.append(f"# --- {snippet.where}\n{snippet.code.replace('<run id>', run_id)}\n")
    return "\n".join(parts)


def test_snippets_are_found_and_a_not_run_comment_is_read(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- not run: needs a GPU -->\n```python\nimport jax\n```\n\n```python\nx = 1\n```\n")
    first, second = snippets(page)
    assert (first.code, first.not_run) == ("import jax", "needs a GPU")
    assert (second.code, second.not_run) == ("x = 1", None)
    assert "docs/export.md" in PAGES and "docs/serving.md" in PAGES  # the pages with Python the tests below run


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_a_pages_python_snippets_run_as_written(page, reader_dir):
    cwd, run_id = reader_dir
    script = cwd / f"{Path(page).stem}_snippets.py"
    script.write_text(page_script(page, run_id))
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, env={**inherited_env(), "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{page}'s snippets ({script}) failed:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("snippet", [s for s in ALL if s.not_run], ids=lambda s: s.where)
def test_snippets_not_run(snippet):
    pytest.skip(f"{snippet.where} is not run: {snippet.not_run}")

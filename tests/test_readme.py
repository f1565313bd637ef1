"""README leads and links; the pages it links exist; its commands are the ones CI runs."""

from __future__ import annotations

import re

from tests.conftest import ROOT

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

"""Which pytest-xdist worker runs what, and in which order (pyproject.toml: `-n 2 --dist loadgroup`).
The suite's wall time is the busier worker's: it is short when the two finish together, so work is
handed out in units whose cost is known, heaviest first.

Every test belongs to a group, a unit of work one worker runs:
- its `@pytest.mark.xdist_group` name, where it has one;
- else every file with a test that uses the tracking stack (tests/tracking_stack.py) is one group,
  so PostgreSQL, the S3 endpoint, the MLflow servers and `stack_run`'s training are built once per
  session rather than once in each worker;
- else a file of SPLIT: one group per test, tests that share a module- or class-scoped fixture
  together (that fixture is still built once), so a long serial file runs on both workers;
- else its file, as `--dist loadfile` would (a module fixture is built once).

Groups are handed out in falling order of cost, from costs.json (seconds per file, setup and teardown
included, from a full run): the longest-first rule, which leaves the short groups for the end, when
they fill the gap between the two workers.  A file not in the table counts as its number of tests
times the table's mean per test.  Refresh the table after a full run with `pytest --write-costs`
(the files it ran are updated, the others kept, deleted ones dropped).

xdist's own loadgroup cannot read the groups here: it appends them to each test's id, which pytest 9
no longer lets a plugin change.  So the workers, which collect, write the groups to a file the
controller names (`pytest_configure_node`), and the controller's scheduler, xdist's LoadScopeScheduling
with the group as the scope, reads it once every worker has collected.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

COSTS = Path(__file__).resolve().parent / "costs.json"
STACK_FIXTURES = {"tracking_stack", "stack_run"}
STACK_GROUP = "tracking-stack"
# Long chains of trainings whose tests share nothing but a module fixture.
SPLIT = {"tests/test_resume.py"}
GROUPS_FILE = "seglab_groups_file"  # the workerinput key naming the file the workers write the groups to


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def marked_group(item: pytest.Item) -> str | None:
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")})
    return "_".join(names) or None


def shared_fixtures(item: pytest.Item) -> list[str]:
    """The module-, class- and package-scoped fixtures the test uses (what ties tests of a file together)."""
    defs = getattr(item, "_fixtureinfo", None)
    defs = defs.name2fixturedefs if defs else {}
    return sorted(name for name in item.fixturenames if name in defs and defs[name][-1].scope in ("module", "class", "package"))


def split_groups(items: list[pytest.Item]) -> dict[str, str]:
    """nodeid -> group for one file of SPLIT: tests joined by a shared fixture are one group (union-find)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for item in items:
        for name in shared_fixtures(item):
            parent[root(item.nodeid)] = root("fixture:" + name)
    return {item.nodeid: f"{file_of(item.nodeid)}::{root(item.nodeid).split(':')[-1]}" for item in items}


def groups(items: list[pytest.Item]) -> dict[str, str]:
    """nodeid -> group."""
    by_file: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        by_file[file_of(item.nodeid)].append(item)
    stack_files = {f for f, its in by_file.items() if any(STACK_FIXTURES & set(getattr(i, "fixturenames", ())) for i in its)}
    group = {}
    for path, its in by_file.items():
        if path in stack_files:
            group.update({i.nodeid: STACK_GROUP for i in its})
        elif path in SPLIT:
            group.update(split_groups(its))
        else:
            group.update({i.nodeid: path for i in its})
    group.update({i.nodeid: name for i in items if (name := marked_group(i))})
    return group


def load_costs() -> dict[str, float]:
    return json.loads(COSTS.read_text()) if COSTS.exists() else {}


def group_costs(nodeids: list[str], group: dict[str, str], costs: dict[str, float]) -> dict[str, float]:
    """A group's share of each file's cost, by its number of tests."""
    per_file: dict[str, int] = defaultdict(int)
    for nodeid in nodeids:
        per_file[file_of(nodeid)] += 1
    known = [f for f in per_file if f in costs]
    mean = sum(costs[f] for f in known) / max(1, sum(per_file[f] for f in known)) or 1.0
    total: dict[str, float] = defaultdict(float)
    for nodeid in nodeids:
        path = file_of(nodeid)
        total[group[nodeid]] += costs[path] / per_file[path] if path in costs else mean
    return total


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect: the same groups and order whatever runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group = groups(items)
    cost = group_costs([i.nodeid for i in items], group, load_costs())
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(group[item.nodeid], index)
    items.sort(key=lambda item: (-cost[group[item.nodeid]], first_seen[group[item.nodeid]]))  # stable: a group keeps its order
    path = getattr(config, "workerinput", {}).get(GROUPS_FILE)
    if path:  # a worker: tell the controller (every worker collects the same tests, hence writes the same file)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as out:
            json.dump(group, out)
        os.replace(tmp, path)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    node.workerinput[GROUPS_FILE] = str(node.config._tmp_path_factory.getbasetemp() / "xdist-groups.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, the scope being the group the workers wrote; the workqueue keeps
        the collection's (heaviest-first) order."""

        def __init__(self, config: pytest.Config, log=None):
            super().__init__(config, log)
            self.config.option.loadscopereorder = False  # xdist would sort the groups by their number of tests
            self.groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # every worker has collected (and written the file) before the first call
                path = config._tmp_path_factory.getbasetemp() / "xdist-groups.json"
                self.groups = json.loads(path.read_text()) if path.exists() else {}
            return self.groups.get(nodeid, file_of(nodeid))

    return GroupScheduling(config, log)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--write-costs", action="store_true",
                     help=f"write each file's seconds (setup, call, teardown) to tests/{COSTS.name}, for the heaviest-first order")


_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.getoption("--write-costs") and not hasattr(session.config, "workerinput"):  # the controller, or -n0
        root = COSTS.parent.parent
        costs = {f: s for f, s in {**load_costs(), **{f: round(s, 1) for f, s in _seconds.items()}}.items() if (root / f).is_file()}
        COSTS.write_text(json.dumps(dict(sorted(costs.items(), key=lambda kv: -kv[1])), indent=1) + "\n")

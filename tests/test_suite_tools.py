"""The suite's own speed-ups keep what they replace: a copied store is the store MLflow would have
created (tests/stores.py), and the groups keep a file's module fixtures on one worker (tests/schedule.py)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from mlflow import MlflowClient

from tests import schedule
from tests.stores import fresh_store, store_of


def test_a_copied_store_opens_like_a_new_one_with_the_openers_artifact_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = fresh_store(tmp_path / "m.db")
    client = MlflowClient(f"sqlite:///{store}")
    (default,) = client.search_experiments()
    assert (default.experiment_id, default.name) == ("0", "Default")
    assert default.artifact_location == str(tmp_path / "mlruns" / "0")  # what a brand-new file gets, not the template's
    assert client.create_experiment("seglab-shapes") == "1"


def test_only_a_new_sqlite_file_of_a_command_that_opens_a_store_is_prepared(tmp_path):
    assert store_of(("trainer.epochs=1",), tmp_path) == tmp_path / "mlflow.db"  # conf/tracking/mlflow.yaml's default
    assert store_of((f"tracking.uri=sqlite:///{tmp_path}/m.db", "--multirun"), tmp_path) == tmp_path / "m.db"
    assert store_of(("tracking.uri=sqlite:///rel.db",), tmp_path) == tmp_path / "rel.db"
    (tmp_path / "old.db").write_bytes(b"")
    for args in [("--cfg", "job"), ("--help",), ("tracking.uri=http://127.0.0.1:5000",), ("tracking.uri=sqlite:///old.db",),
                 ("tracking.uri=sqlite:///missing/dir/m.db",), ("--config-dir", str(tmp_path))]:
        assert store_of(args, tmp_path) is None, args


def fake_item(nodeid: str, fixtures: dict[str, str], marks: tuple[str, ...] = ()):
    """What schedule reads of a pytest item: its id, fixture closure with scopes, xdist_group marks."""
    defs = {name: [SimpleNamespace(scope=scope)] for name, scope in fixtures.items()}
    return SimpleNamespace(nodeid=nodeid, fixturenames=list(fixtures), _fixtureinfo=SimpleNamespace(name2fixturedefs=defs),
                           iter_markers=lambda name: [SimpleNamespace(args=(m,), kwargs={}) for m in marks])


def test_groups_keep_module_fixtures_together_and_the_stack_in_one_worker(monkeypatch):
    monkeypatch.setattr(schedule, "SPLIT", {"tests/test_long.py"})
    items = [
        fake_item("tests/test_long.py::test_a", {"base": "module", "tmp_path": "function"}),
        fake_item("tests/test_long.py::test_b", {"tmp_path": "function"}),
        fake_item("tests/test_long.py::test_c", {"base": "module"}),
        fake_item("tests/test_x.py::test_1", {"tracking_stack": "session"}),
        fake_item("tests/test_x.py::test_2", {}),
        fake_item("tests/test_y.py::test_1", {"stack_run": "session", "tracking_stack": "session"}),
        fake_item("tests/test_z.py::test_1", {}),
        fake_item("tests/test_z.py::test_2", {}, marks=("mine",)),
    ]
    group = schedule.groups(items)
    assert group["tests/test_long.py::test_a"] == group["tests/test_long.py::test_c"] == "tests/test_long.py::base"
    assert group["tests/test_long.py::test_b"] == "tests/test_long.py::test_b"
    assert {group[f"tests/test_{f}"] for f in ("x.py::test_1", "x.py::test_2", "y.py::test_1")} == {schedule.STACK_GROUP}
    assert (group["tests/test_z.py::test_1"], group["tests/test_z.py::test_2"]) == ("tests/test_z.py", "mine")

    cost = schedule.group_costs([i.nodeid for i in items], group, {"tests/test_long.py": 30.0, "tests/test_x.py": 4.0})
    assert cost["tests/test_long.py::base"] == 20.0 and cost["tests/test_long.py::test_b"] == 10.0
    # not in the table: the table's mean per test (34 s / 5 tests)
    assert cost[schedule.STACK_GROUP] == 4.0 + 6.8 and cost["tests/test_z.py"] == cost["mine"] == 6.8


def test_the_cost_table_names_only_test_files_that_exist():
    root = Path(schedule.__file__).parent
    assert all(os.path.isfile(root.parent / name) for name in schedule.load_costs()), "refresh it: pytest --write-costs"

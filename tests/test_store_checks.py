"""Names and paths of the tracking store checked before TensorFlow loads (issue 21): a registered
model name MLflow would refuse, a tracking URI MLflow has no store for, and an artifact directory
that cannot be written, each one line, exit 2, before any run is opened.  The real command line and
a real SQLite store; the tests run as any user (a file where a directory must be, not permissions)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from seglab.config import preflight
from seglab.config.check import ConfigError
from tests.conftest import TINY, run_cli


def refused(tmp_path, *args: str) -> str:
    done = run_cli(*TINY, *args, cwd=tmp_path, check=False, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not list(tmp_path.glob("outputs/*/*/checkpoints/*")), "nothing trained"
    return lines[0]


@pytest.mark.parametrize("name, why", [("team/seg:v1", "cannot contain '/' or ':'"), ("50%", "cannot contain '%'"),
                                       ("a/../b", "cannot contain '/'"), ("seg.", None), ("..seg", "read as a path"), (".", "read as a path")])
def test_a_registered_model_name_is_checked_against_mlflows_rules_before_training(tmp_path, name, why):
    if why is None:  # MLflow takes it: so does the config
        run_cli(*TINY, f"tracking.register_as={name}", "--cfg", "job", cwd=tmp_path)
        from seglab.config import schema

        assert schema.compose([f"tracking.register_as={name}"]).tracking.register_as == name
        return
    line = refused(tmp_path, f"tracking.register_as={name}", f"tracking.uri=sqlite:///{tmp_path}/m.db")
    assert line.startswith(f"seglab: tracking.register_as='{name}' is not allowed: ") and why in line, line
    assert not (tmp_path / "m.db").exists()


def test_mlflows_own_registry_refuses_what_the_schema_refuses(tmp_path):
    """The rules are copied from MLflow's: check them against MLflow's registry itself (its SQL one; '%',
    which only the file-based registry refuses, is refused for both)."""
    from mlflow.exceptions import MlflowException

    from seglab.config.tracking import registered_name_problem

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    for name in ("team/seg:v1", "../seg", "..seg", ".", "a//b", "seg/", "ok-name_1.0", "seg."):
        try:
            client.create_registered_model(name)
            taken = True
        except MlflowException:
            taken = False
        assert taken == (registered_name_problem(name) is None), name


@pytest.mark.parametrize("uri, names", [("htp://x", ["tracking.uri=htp://x", "scheme 'htp'", "sqlite:///mlflow.db"]),
                                        ("sqlite:/relative.db", ["tracking.uri=sqlite:/relative.db", "sqlite:///relative/file.db"]),
                                        ("sqlite://relative.db", ["tracking.uri=sqlite://relative.db", "sqlite:///relative/file.db"])])
def test_a_malformed_tracking_uri_is_one_line(tmp_path, uri, names):
    line = refused(tmp_path, f"tracking.uri={uri}")
    assert all(name in line for name in names), line


def test_an_unwritable_default_mlruns_is_refused_before_training_though_the_database_is_writable(tmp_path):
    (tmp_path / "mlruns").write_text("not a directory")  # where MLflow puts a new experiment's artifacts
    line = refused(tmp_path, "tracking.uri=sqlite:///mlflow.db")
    assert line.startswith("seglab: tracking.uri=sqlite:///mlflow.db: the run's artifacts go to ") and str(tmp_path / "mlruns") in line
    assert "not a directory" in line and not (tmp_path / "mlflow.db").exists()
    done = run_cli("--multirun", *TINY, "model.base_filters=2,4", cwd=tmp_path, check=False, timeout=120)  # a sweep too
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == line, done.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()


def test_an_existing_experiments_own_artifact_location_is_the_one_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default ./mlruns is relative to the working directory
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file")
    client.create_experiment("elsewhere", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_experiment("blocked", artifact_location=(blocked / "1").as_uri())
    (tmp_path / "mlruns").write_text("not a directory")  # not used by either experiment
    preflight.check_store(uri, experiment="elsewhere")
    with pytest.raises(ConfigError, match=f"artifacts go to {blocked}/1, which cannot be written \\(not a directory\\)"):
        preflight.check_store(uri, experiment="blocked")
    with pytest.raises(ConfigError, match="mlruns, which cannot be written"):
        preflight.check_store(uri, experiment="new")  # a new experiment's artifacts go to ./mlruns


OPENER = """
import sys, time
from seglab import tracking
uri, at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))
with tracking.Run(uri, "e", "r", {}) as run:
    run.log_metrics({"m": 1.0})
"""


def test_a_store_that_does_not_exist_yet_opened_by_three_processes_at_once_works_for_all(tmp_path):
    """MLflow creates a new SQLite store in the first process that opens it: three processes doing so in the
    same instant each get a run (not `table ... already exists`, not an out-of-date schema)."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    uri = f"sqlite:///{tmp_path}/new.db"
    at = time.time() + 6
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, uri, str(at)], cwd=tmp_path, text=True, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-1500:] for e in errors]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3

"""Names and paths of the tracking store checked before TensorFlow loads (issue 21): a registered
model name MLflow would refuse, a tracking URI MLflow has no store for, and an artifact directory
that cannot be written, each one line, exit 2, before any run is opened; so is a store that is not an
MLflow store (another web server, a database server that does not answer, another program's SQLite
file) and a read-only store that evaluate would record a run in.  The real command line and a real
SQLite store; the tests run as any user (a file where a directory must be, not permissions; a
read-only mount where `unshare` allows one)."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from seglab.config import preflight
from seglab.config.check import ConfigError
from tests.conftest import CLI_ENV, TINY, inherited_env, run_cli
from tests.tracking_stack import postgres_server  # noqa: F401  (a fixture)


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
tracking.Run  # MLflow loads before the common instant, not during it
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


def test_an_empty_postgresql_database_opened_by_four_processes_at_once_works_for_all(postgres_server, request):
    """MLflow creates and migrates the tables of an empty PostgreSQL database in whichever process opens it first;
    four doing so at once each get a run, and the schema is migrated once, to MLflow's head.  Without seglab's lock
    (a PostgreSQL advisory lock around the first open) this failed with `relation ... already exists`."""
    import os
    import subprocess
    import sys
    import time

    import sqlalchemy
    from mlflow.store.db.utils import _get_latest_schema_revision

    from tests.conftest import ROOT

    uri = postgres_server.new_database(f"race_{os.getpid()}_{request.node.name[-12:].lower()}")
    at = time.time() + 8
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, uri, str(at)], cwd=request.path.parent, text=True,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-1500:] for e in errors]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as db:
        versions = [row[0] for row in db.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))]
    engine.dispose()
    assert versions == [_get_latest_schema_revision()]


def test_a_postgresql_password_that_is_refused_is_one_line_without_it(tmp_path, postgres_server):
    uri = postgres_server.uri.replace(f":{postgres_server.password}@", ":wrong-secret@")
    line = refused(tmp_path, f"tracking.uri={uri}")
    assert line.startswith(f"seglab: tracking.uri={uri.replace('wrong-secret', '***')}: cannot open the database ("), line
    assert "password authentication failed" in line and "wrong-secret" not in line, line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def plain_web_server(tmp_path):
    """`python -m http.server` on a free port: it answers HTTP, 404 to MLflow's REST paths."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


def test_a_web_server_that_is_not_mlflow_is_one_line_in_seconds(tmp_path, plain_web_server):
    started = time.time()
    line = refused(tmp_path, f"tracking.uri={plain_web_server}")
    assert time.time() - started < 30
    assert line.startswith(f"seglab: tracking.uri={plain_web_server} answers HTTP but is not an MLflow tracking server "
                           "(GET /api/2.0/mlflow/experiments/search?max_results=1 answered HTTP 404"), line


def test_a_database_server_that_does_not_answer_is_one_line_in_seconds(tmp_path):
    """Before, MLflow retried the connection for about two minutes, then raised psycopg's traceback."""
    port = _free_port()  # nothing listens there
    started = time.time()
    line = refused(tmp_path, f"tracking.uri=postgresql://seglab:secret@127.0.0.1:{port}/mlflow")
    assert time.time() - started < 30
    assert line.startswith(f"seglab: tracking.uri=postgresql://seglab:***@127.0.0.1:{port}/mlflow: no database server answers "
                           f"(127.0.0.1:{port}: ConnectionRefusedError"), line
    assert "secret" not in line


def test_another_programs_sqlite_database_is_refused_and_left_as_it_was(tmp_path):
    """Before, MLflow added its tables to it (and the run went there)."""
    other = tmp_path / "notes.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('mine')")
    before = other.read_bytes()
    line = refused(tmp_path, f"tracking.uri=sqlite:///{other}")
    assert line == (f"seglab: tracking.uri=sqlite:///{other}: {other} is another program's SQLite database (tables notes), "
                    "not an MLflow store; give a new file name (e.g. sqlite:///mlflow.db) or the store seglab wrote."), line
    assert other.read_bytes() == before


def _read_only_mounts_work(directory) -> bool:
    done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {directory} {directory}"], capture_output=True)
    return done.returncode == 0


def test_evaluate_against_a_read_only_store_is_one_line_before_tensorflow(tmp_path):
    """A store on a read-only mount (a private mount namespace: root writes through file permissions); the evaluation
    would be recorded as a run. Before, it failed after loading TensorFlow, with SQLAlchemy's traceback."""
    store = tmp_path / "store"
    store.mkdir()
    if shutil.which("unshare") is None or not _read_only_mounts_work(store):
        pytest.skip("needs `unshare -m` and bind mounts (root in a Linux mount namespace)")
    uri = f"sqlite:///{store}/m.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("seglab-shapes")).info.run_id
    before = (store / "m.db").read_bytes()
    command = (f"mount --bind -o ro {store} {store} && exec {sys.executable} -m seglab.evaluate model_uri=runs:/{run_id}/model "
               f"tracking.uri={uri}")
    started = time.time()
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**inherited_env(), **CLI_ENV})
    assert time.time() - started < 30
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0] == (f"seglab.evaluate: tracking.uri={uri}: {store}/m.db cannot be written (Read-only file system) and this "
                        "command records a run in it; make it writable, or give another database file"), lines[0]
    assert (store / "m.db").read_bytes() == before

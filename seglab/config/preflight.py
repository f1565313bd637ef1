"""Checks of the file system and the tracking store that can be made before TensorFlow loads, so a
wrong path fails in about a second instead of after an epoch: the checkpoint and cache directories
can be written, the data directory exists, the tracking store is a store.  Each failure is a
ConfigError naming the key, the path and the fix.  Nothing here imports TensorFlow or MLflow.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from omegaconf import DictConfig, OmegaConf

from seglab.config import tracking, trainer
from seglab.config.schema import ConfigError
from seglab.models import facts
from seglab.util import net

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file (sqlite.org/fileformat.html)
LOCAL_SCHEMES = ("file:",)
# The tracking URI schemes MLflow 3 has a store for (mlflow/tracking/_tracking_service/utils.py; a database
# scheme may name its driver, postgresql+psycopg2), and those of installed plugins (entry points below).
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")
PLUGIN_STORES = "mlflow.tracking_store"
# Where MLflow puts a SQLite store's artifacts when the experiment does not say: relative to the working directory.
DEFAULT_ARTIFACT_ROOT = "mlruns"
# Database servers MLflow can keep a store in, by scheme, and their default ports: a server that does not answer
# is named in seconds (MLflow's SQLAlchemy store retries a connection for about two minutes, then raises the driver's error).
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# Tables every MLflow SQLite store has (alembic's version table and the experiments); an SQLite file with tables
# but neither is another program's database, which MLflow would add its tables to.
MLFLOW_TABLES = ("alembic_version", "experiments")


def check_paths(cfg: DictConfig, output_dir: str | Path) -> None:
    """Everything a training job will write or read on this machine, before it starts."""
    writable_dir(Path(output_dir) / cfg.trainer.checkpoint_dir, "trainer.checkpoint_dir", cfg.trainer.checkpoint_dir)
    cache = cfg.data.cache
    if cache not in (None, "memory"):
        writable_dir(Path(cache).expanduser().parent, "data.cache", cache)
    source_path = OmegaConf.select(cfg, "data.source.path")
    if source_path and OmegaConf.select(cfg, "data.source.kind") in (None, "folder"):
        if not Path(source_path).expanduser().is_dir():
            raise ConfigError(
                f"data.source.path={source_path}: no such directory; give the folder the data "
                f"set is unpacked in (see docs/troubleshooting.md), or use data=shapes, which needs no files."
            )
    weights = OmegaConf.select(cfg, "model.encoder.weights")
    if weights not in (None, facts.IMAGENET) and not Path(weights).expanduser().is_file():
        raise ConfigError(f"model.encoder.weights={weights}: no such file; give the path of a weights file of the "
                          "encoder with include_top=False, or use model.encoder.weights=imagenet or null.")
    check_store(cfg.tracking.uri, experiment=cfg.tracking.experiment)


def check_batches(cfg: DictConfig) -> None:
    """A training job's batch size and overfit_batches against its training split, where the config says its size
    (the built-in data); other sources are checked once counted (engine/train.py)."""
    images = OmegaConf.select(cfg, "data.source.train_size")
    if images is not None:
        trainer.check_batches(cfg.trainer, images, "data.source.train_size")


def writable_dir(path: Path, key: str, value: object) -> None:
    """Create `path` if needed and write a file in it: the only test that also holds for root,
    read-only mounts and full disks (os.access answers for permissions only)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={value}: {path} is a file, not a directory; choose a directory, e.g. {key}={_example(key)}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".seglab-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"{key}={value}: cannot write to {path} ({err.strerror or err}); choose a directory you can write to, "
            f"e.g. {key}={_example(key)}."
        ) from None


def writable_file(path: str | Path, key: str) -> None:
    """An output file that cannot be written (a directory by that name, a parent that cannot be created or
    written): fail now, not after the work that produces it.  The file itself is not created."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"{key}={path} is a directory; give a file name, e.g. {key}={Path(path) / _file_example(key)}.")
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{key}={path}: {target} is read-only; choose another file or make it writable.")
    writable_dir(target.parent if str(target.parent) else Path("."), key, path)


def _file_example(key: str) -> str:
    return {"--output": "report.md", "bench.out": "bench.json"}.get(key, "out")


def _example(key: str) -> str:
    return {"data.cache": "./cache/data", "trainer.checkpoint_dir": "checkpoints", "tracking.uri": "sqlite:///mlflow.db"}.get(key, "./somewhere")


def check_store(uri: str, must_exist: bool = False, key: str | None = None, experiment: str | None = None,
                writes: bool | None = None) -> None:
    """A tracking URI MLflow has no store for, or a store that cannot work (an SQLite file and the directory its
    artifacts go to, a `file:` directory, a database server that does not answer): fail now, naming it.  `must_exist`
    for tools that read a store (predict, evaluate, report): they must not leave an empty `mlflow.db` behind
    when the user is in the wrong directory.  `writes`: the command writes to the store (default: unless
    `must_exist`; evaluate records a run).  `experiment`: the one a run will write to, whose
    artifact directory (or MLflow's default ./mlruns) must be writable.  `key`: what the user set (default
    tracking.uri, or MLFLOW_TRACKING_URI when the URI is that variable's)."""
    key = key or tracking.uri_key(uri)
    _check_scheme(uri, key)
    _check_database_server(uri, key)
    if uri.startswith("sqlite:"):
        _check_sqlite(uri, must_exist, key, not must_exist if writes is None else writes)
        if not must_exist:
            _check_artifact_root(uri, key, experiment)
    elif uri.startswith(LOCAL_SCHEMES) or "://" not in uri:
        path = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
        if must_exist and not path.is_dir():
            raise ConfigError(f"{key}={uri}: no MLflow store at {path}; give the tracking URI the training run used.")
        writable_dir(path, key, uri)


def _check_scheme(uri: str, key: str) -> None:
    if "://" not in uri and not uri.startswith(("sqlite:", "file:")):
        return  # a local directory (a file store)
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    plugins = {e.name for e in metadata.entry_points(group=PLUGIN_STORES)}
    if scheme not in (*TRACKING_SCHEMES, *plugins):
        raise ConfigError(f"{key}={uri}: MLflow has no tracking store for the scheme {scheme!r}; use sqlite:///mlflow.db, "
                          f"http(s)://host:port, a directory, or another of {', '.join(TRACKING_SCHEMES)}.")


def _check_database_server(uri: str, key: str) -> None:
    """A PostgreSQL, MySQL or SQL Server store whose server does not accept a connection (a local socket is left to the driver)."""
    parsed = urlparse(uri)
    port = DATABASE_PORTS.get(parsed.scheme.split("+", 1)[0].lower())
    if port is None or not parsed.hostname:
        return
    why = net.tcp_unreachable(parsed.hostname, parsed.port or port, net.REACHABILITY_TIMEOUT_S)
    if why:
        raise ConfigError(f"{key}={_without_password(uri)}: no database server answers ({why}); start it, fix the host "
                          "and port, or log locally with tracking.uri=sqlite:///mlflow.db.")


def _without_password(uri: str) -> str:
    parsed = urlparse(uri)
    return uri.replace(f":{parsed.password}@", ":***@") if parsed.password else uri


def _check_artifact_root(uri: str, key: str, experiment: str | None) -> None:
    """A run's artifacts (checkpoints, the model) go to its experiment's artifact location: a new
    experiment's is ./mlruns.  Read from the SQLite file itself (no MLflow), so an unwritable
    directory fails now rather than after training, with the run FINISHED and its artifacts lost."""
    location = _experiment_location(uri, experiment) or DEFAULT_ARTIFACT_ROOT
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return  # a remote artifact store (s3://, ...): the tracking server's concern
    path = Path(unquote(parsed.path) if parsed.scheme else location).expanduser()
    target = next(p for p in [path, *path.parents] if p.exists())  # the directory MLflow will write or create it in
    if not target.is_dir() or not _can_write(target):
        raise ConfigError(f"{key}={uri}: the run's artifacts go to {path.resolve()}, which cannot be written "
                          f"({'not a directory' if not target.is_dir() else 'no permission'}); make it "
                          "writable, or run from a directory where ./mlruns can be written")


def _experiment_location(uri: str, experiment: str | None) -> str | None:
    path = Path(tracking.sqlite_file(uri)).expanduser()
    if experiment is None or not path.is_file():
        return None
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
            found = db.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
    except sqlite3.Error:
        return None  # not yet an MLflow store (no tables): a new experiment
    return found[0] if found else None


def _can_write(directory: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".seglab-write-test-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _check_sqlite(uri: str, must_exist: bool, key: str, writes: bool) -> None:
    if uri in ("sqlite://", "sqlite:///:memory:"):
        return
    if not uri.startswith("sqlite:///"):
        raise ConfigError(f"{key}={uri}: write an SQLite URI as sqlite:///relative/file.db or sqlite:////absolute/file.db.")
    path = Path(tracking.sqlite_file(uri)).expanduser()
    if path.is_dir():
        raise ConfigError(f"{key}={uri}: {path} is a directory; give a database file, e.g. sqlite:///{path}/mlflow.db.")
    if path.exists():
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise ConfigError(
                f"{key}={uri}: {path} is not an SQLite database; point it at the mlflow.db seglab writes, or at a new file name."
            )
        _check_mlflow_tables(uri, path, key)
        if writes:
            _check_writable_database(uri, path, key)
        return
    if must_exist:
        raise ConfigError(
            f"{key}={uri}: there is no database {path} (run from the directory training ran in, "
            "or give the tracking URI the training run used)."
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{key}={uri}: the directory {parent} does not exist; create it or choose another path.")
    writable_dir(parent, key, uri)


def _check_mlflow_tables(uri: str, path: Path, key: str) -> None:
    """Another program's SQLite database (tables, none of them MLflow's): refused, where MLflow would add its tables to it."""
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
            tables = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.Error:
        return  # locked or unreadable: MLflow says why
    if tables and not set(MLFLOW_TABLES) & set(tables):
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise ConfigError(f"{key}={uri}: {path} is another program's SQLite database (tables {shown}), not an MLflow store; "
                          "give a new file name (e.g. sqlite:///mlflow.db) or the store seglab wrote.")


def _check_writable_database(uri: str, path: Path, key: str) -> None:
    """The database file and its directory (SQLite's journal goes there) must be writable: a read-only mount, a file of
    another user."""
    try:
        with open(path, "r+b"):
            pass
    except OSError as err:
        raise ConfigError(f"{key}={uri}: {path.resolve()} cannot be written ({err.strerror}) and this command records a "
                          "run in it; make it writable, or give another database file") from None
    directory = path.parent if str(path.parent) else Path(".")
    if not _can_write(directory):
        raise ConfigError(f"{key}={uri}: the directory {directory.resolve()} of the database cannot be written (SQLite "
                          "writes its journal there) and this command records a run; make it writable, or give another database file")


def check_output_outside_input(input_path: str, output_path: str) -> None:
    """`predict`: masks written inside the input folder would be read as images by the next run."""
    source, target = Path(input_path).resolve(), Path(output_path).resolve()
    if source.is_dir() and (target == source or source in target.parents):
        raise ConfigError(
            f"output={output_path} is inside input={input_path}: a second run would segment the masks themselves; "
            "choose an output directory outside the input."
        )

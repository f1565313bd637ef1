"""Fresh SQLite MLflow stores without paying MLflow's migrations each time.

A new SQLite store runs every MLflow schema migration when it is first opened: seconds of commits
each, and ~40 tests start with one.  Here MLflow's own table creation (`_initialize_tables`, what
`SqlAlchemyStore` calls on an empty database) runs once per test process, into a template file;
`fresh_store(path)` copies that file into place.  The copy is still the real store: the process
that opens it first finds the tables at MLflow's head revision and adds the Default experiment
itself, with the artifact root of its own working directory, exactly as on a brand-new file.
`store_dump(path, artifacts)` reads everything a store holds, to check that a command left it as it was.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

from seglab.config.tracking import LOCAL_URI

_lock = threading.Lock()
_template: Path | None = None


def _migrated_template() -> Path:
    global _template
    with _lock:
        if _template is None:
            # Lazy imports: MLflow loads only in the test processes that need a store.
            from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine_with_retry

            folder = Path(tempfile.mkdtemp(prefix="seglab-store-template-"))
            atexit.register(shutil.rmtree, folder, True)
            path = folder / "mlflow.db"
            engine = create_sqlalchemy_engine_with_retry(f"sqlite:///{path}")
            _initialize_tables(engine)
            engine.dispose()
            _template = path
        return _template


def fresh_store(path: Path) -> Path:
    """Put an empty, migrated MLflow store at `path` (which must not exist yet); returns `path`."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: a fresh store goes to a new file")
    shutil.copyfile(_migrated_template(), path)
    return path


# What `python -m seglab` does first without touching a store: no store to prepare for it.
NO_STORE_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
# A config directory or file may set tracking.uri itself: the default store is then not the one used.
OTHER_CONFIG_FLAGS = {"--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn"}


def default_uri() -> str:
    """The store a command uses without tracking.uri: the tests' commands run without $MLFLOW_TRACKING_URI (LEAKED)."""
    return LOCAL_URI


def store_of(args: tuple[str, ...], cwd: Path) -> Path | None:
    """The new SQLite file `python -m seglab ARGS` run from `cwd` would create, or None (a server,
    an existing file, a directory that does not exist, a command that opens no store)."""
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    if flags & NO_STORE_FLAGS:
        return None
    uris = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in ("tracking.uri", "+tracking.uri", "++tracking.uri")]
    if not uris and flags & OTHER_CONFIG_FLAGS:
        return None
    uri = uris[-1] if uris else default_uri()
    if not uri.startswith("sqlite:///") or "," in uri or "?" in uri:
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    path = path if path.is_absolute() else Path(cwd) / path
    return path if not path.exists() and path.parent.is_dir() else None


def store_dump(db: Path, artifacts: Path | None = None) -> dict[str, object]:
    """Everything an MLflow SQLite store holds, to compare before and after a command: its schema, every row of every
    table (runs, params, metrics, latest_metrics, tags, experiment_tags, logged_models and their params, tags and
    metrics, datasets, inputs, ...; sorted, so the order SQLite returns them in does not matter), and, given the
    artifact directory, each file under it with its size and SHA-256."""
    dump: dict[str, object] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:  # read-only: the dump writes nothing
        for name, sql in connection.execute("select name, sql from sqlite_master where type='table' order by name"):
            rows = connection.execute(f'select * from "{name}"').fetchall()
            dump[f"table {name}"] = (sql, sorted(rows, key=repr))
    connection.close()
    if artifacts is not None:
        for file in sorted(p for p in artifacts.rglob("*") if p.is_file()):
            data = file.read_bytes()
            dump[f"artifact {file.relative_to(artifacts)}"] = (len(data), hashlib.sha256(data).hexdigest())
    return dump


def dump_changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """What differs between two `store_dump`s, one line per table or file (empty: the store is as it was)."""
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before or key not in after:
            changes.append(f"{key}: {'added' if key not in before else 'removed'}")
        elif before[key] != after[key]:
            if key.startswith("table "):
                (_, old), (_, new) = before[key], after[key]
                added, gone = [r for r in new if r not in old], [r for r in old if r not in new]
                changes.append(f"{key}: added {added[:3]}, removed {gone[:3]}")
            else:
                changes.append(f"{key}: {before[key]} -> {after[key]}")
    return changes

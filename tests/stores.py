"""Fresh SQLite MLflow stores without paying MLflow's migrations each time.

A new SQLite store runs every MLflow schema migration when it is first opened: seconds of commits
each, and ~40 tests start with one.  Here MLflow's own table creation (`_initialize_tables`, what
`SqlAlchemyStore` calls on an empty database) runs once per test process, into a template file;
`fresh_store(path)` copies that file into place.  The copy is still the real store: the process
that opens it first finds the tables at MLflow's head revision and adds the Default experiment
itself, with the artifact root of its own working directory, exactly as on a brand-new file.
"""

from __future__ import annotations

import atexit
import shutil
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

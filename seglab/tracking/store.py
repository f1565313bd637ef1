"""The tracking store itself: how an unusable store is told apart from a bad request, and the
fast reachability check of a server.  The store is whatever `tracking.uri` says (SQLite file, or an
http(s) tracking server with its own artifact store); nothing here assumes a local file."""

# Lazy imports: MlflowClient (MLflow's store code) loads when a database store is opened, not when errors are classified.

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import requests
import sqlalchemy
from mlflow.exceptions import MlflowException

from seglab.config.tracking import sqlite_file
from seglab.errors import UserError
from seglab.util import net

# A tag holding a message (an error, why a run was ended, what changed) keeps its start (MLflow caps a tag value at 8,000 characters).
ERROR_TAG_CHARS = 5000
# MLflow's defaults are 7 retries with exponential backoff and a 120 s timeout per request: minutes
# of waiting per call on a dead server.  Values the user set in the environment win.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# What a store that is down or misbehaving raises (the REST client wraps connection errors in MlflowException).
STORE_ERRORS = (MlflowException, requests.exceptions.RequestException, OSError)
CONNECTION_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError, OSError)


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message says which URI and what to do."""


def check_reachable(uri: str, create: bool = True) -> None:
    """Fail in seconds, not after minutes of MLflow's HTTP retries, when a server is down; a SQLite store
    or a PostgreSQL database is opened first by one process at a time (`_open_sqlite`, `_open_postgresql`).  Every
    command calls this before it uses the store.  `create=False`: a SQLite store that does not exist yet is left
    absent (the command's tracking.Run creates it when it opens, through here): a command refused before then
    leaves no store behind."""
    if uri.startswith("sqlite:///") and (create or not sqlite_absent(uri)):
        _open_sqlite(uri)
    if uri.split("://", 1)[0].split("+", 1)[0] == "postgresql":
        _open_postgresql(uri)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=net.REACHABILITY_TIMEOUT_S)
    except urllib.error.HTTPError:
        pass  # it answered (e.g. 401 behind basic auth, 404 behind a path prefix): it is up
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"MLflow tracking server tracking.uri={uri} is not reachable ({err}). Start it (e.g. "
            "`docker compose up -d mlflow`), fix the URI, or log locally with tracking.uri=sqlite:///mlflow.db."
        ) from err
    _check_speaks_mlflow(uri)


# An MLflow REST call every tracking server answers with JSON: its experiments, or an MLflow error (`error_code`).
MLFLOW_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
AUTH_REFUSED = (401, 403)  # a server behind authentication: its MLflow API is not visible, and it is up
MAX_PROBE_BYTES = 65536  # of the probe's answer: one experiment's JSON, or the start of another server's page


def _check_speaks_mlflow(uri: str) -> None:
    """A server that answers but not as MLflow does (another web server on that port, a wrong path): one line
    now, not MLflow's traceback on its first call."""
    url = f"{uri.rstrip('/')}{MLFLOW_PROBE}"
    try:
        with urllib.request.urlopen(url, timeout=net.REACHABILITY_TIMEOUT_S) as answer:
            status, body = answer.status, answer.read(MAX_PROBE_BYTES)
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read(MAX_PROBE_BYTES)
    except (urllib.error.URLError, OSError):
        return  # /health answered: a slow or flaky API is the run's concern (MLflow retries)
    try:
        speaks = isinstance(json.loads(body), dict)
    except ValueError:
        speaks = False
    if not speaks and status not in AUTH_REFUSED:
        raise TrackingError(
            f"tracking.uri={uri} answers HTTP but is not an MLflow tracking server (GET {MLFLOW_PROBE} answered HTTP "
            f"{status}, not MLflow's JSON); give the address `mlflow server` listens on (with its path prefix, if any), "
            "or log locally with tracking.uri=sqlite:///mlflow.db."
        )



class WriteFailed(TrackingError):
    """A file of the run could not be written (disk full, file too large, read-only, no permission): the run ends
    FAILED and the command exits non-zero, never 0 with a model or checkpoint lost."""


# A local write the operating system refused: not a server that went away (Run carries on without one), a lost file.
WRITE_REFUSED = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def write_refused(err: BaseException) -> OSError | None:
    """The OSError of a file the operating system refused to write, wherever it is in `err`'s chain; else None."""
    seen: BaseException | None = err
    while seen is not None:
        if (isinstance(seen, OSError) and not isinstance(seen, requests.exceptions.RequestException)
                and seen.errno in WRITE_REFUSED):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class StoreWriteFailed(WriteFailed):
    """The SQLite store's own file could not be written (disk full, read-only, an I/O error, locked by another
    program past SQLite's busy timeout): not a server gone away, which training survives.  `path`: the file."""

    def __init__(self, message: str, path: str, fix: str):
        super().__init__(message)
        self.path, self.fix = path, fix


# SQLite's primary result codes of a database file that cannot be written (sqlite.org/rescode.html): full,
# read-only, an I/O error, busy or locked past the busy timeout, or it or its journal cannot be opened.
SQLITE_WRITE_REFUSED = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY,
                        sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN)
SQLITE_PRIMARY = 0xFF  # an extended result code (e.g. SQLITE_IOERR_WRITE) carries its primary code in its low byte


def store_write_refused(uri: str, err: BaseException, doing: str = "writing") -> StoreWriteFailed | None:
    """The SQLite store `uri` refused a write (its file, not the request), wherever that is in `err`'s chain: a
    StoreWriteFailed naming the file, what was being done and the reason, and the fix (`fix`); else None."""
    if not uri.startswith("sqlite:///"):
        return None
    seen: BaseException | None = err
    while seen is not None:
        code = getattr(seen, "sqlite_errorcode", None)
        if isinstance(seen, sqlite3.Error) and code is not None and code & SQLITE_PRIMARY in SQLITE_WRITE_REFUSED:
            path = str(Path(sqlite_file(uri)).expanduser().absolute())
            return StoreWriteFailed(f"tracking.uri={uri}: the store file {path} could not be written while {doing} ({seen})",
                                    path, _store_fix(code, path))
        seen = seen.__cause__ or seen.__context__
    return None


class QuietStoreWriteErrors(logging.Filter):
    """MLflow logs the traceback of every database error it raises; one of a SQLite store file that cannot be
    written is said by seglab in one line instead (`store_write_refused`), so MLflow's log of it is dropped."""

    LOGGER = logging.getLogger("mlflow.store.db.utils")

    def __init__(self, uri: str):
        super().__init__()
        self.uri = uri

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and store_write_refused(self.uri, record.exc_info[1]))


def _store_fix(code: int, path: str) -> str:
    where = Path(path).parent
    if code & SQLITE_PRIMARY == sqlite3.SQLITE_FULL:
        return f"free space on the disk of {where}"
    if code & SQLITE_PRIMARY in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return f"stop the program that holds {path} locked"
    return f"make {path} and its directory {where} writable (and free space on that disk)"


def store_unavailable(err: BaseException) -> bool:
    """The store cannot be reached or failed on its side (connection refused or reset, timeout,
    retries exhausted, HTTP 5xx, a local disk error), as opposed to rejecting a bad request (4xx)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, CONNECTION_ERRORS):
            return True
        if isinstance(seen, MlflowException) and seen.get_http_status_code() >= 500:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def shown(uri: str) -> str:
    """The URI as a message may print it: a database URI's password as ***."""
    try:
        return sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a database URL (http://, file:, a path): nothing to hide
        return uri


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else type(err).__name__


def sqlite_absent(uri: str) -> bool:
    """A `sqlite:///` store whose file does not exist yet: it holds no run to find, and asking it would create it
    (a command refused before its run opens then leaves no store behind)."""
    path = sqlite_file(uri)
    return path not in ("", ":memory:") and not Path(path).expanduser().exists()


_opened: set[str] = set()  # SQLite stores this process has opened (and so found whole): nothing to wait for again


def _open_sqlite(uri: str) -> None:
    """MLflow creates and migrates a new SQLite store in whichever process opens it first; two at once both
    try (`table ... already exists`), and one that opens it mid-migration finds an out-of-date schema.  So
    each process opens it the first time under an exclusive lock on the file's directory (no lock file
    is left behind), and finds it either absent or whole."""
    path = sqlite_file(uri)
    if uri in _opened or path in ("", ":memory:"):
        return
    from mlflow import MlflowClient  # MLflow's store code loads when a command opens a store, not on import

    directory = Path(path).expanduser().absolute().parent
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # no such directory: MLflow names it (seglab.config.preflight checked it before)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        MlflowClient(uri).search_experiments(max_results=1)
    finally:
        os.close(handle)  # releases the lock
    _opened.add(uri)


# The key of the PostgreSQL advisory lock that every seglab process holds while it opens a database the first time:
# any constant, the same in every process ("seglab" in ASCII).
SCHEMA_LOCK_KEY = int.from_bytes(b"seglab")


def _open_postgresql(uri: str) -> None:
    """MLflow creates and migrates the tables of an empty PostgreSQL database in whichever process opens it first;
    two at once both try (`relation ... already exists`, a duplicate alembic_version row).  So each process opens it
    the first time while holding a session-level advisory lock of the same database (`pg_advisory_lock`), taken on a
    connection of its own: the first creates the tables, the others wait and find them whole."""
    if uri in _opened:
        return
    from mlflow import MlflowClient  # MLflow's store code loads when a command opens a store, not on import

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    except ModuleNotFoundError as err:  # postgresql:// is psycopg2's scheme; postgresql+psycopg:// is psycopg 3's
        raise TrackingError(f"tracking.uri={shown(uri)}: its database driver is not installed ({err.name}); "
                            f"pip install psycopg2-binary, or name psycopg 3 (postgresql+psycopg://...)") from err
    try:
        with engine.connect() as connection:  # closing it (NullPool: the connection itself) releases the lock
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            MlflowClient(uri).search_experiments(max_results=1)
    except sqlalchemy.exc.OperationalError as err:
        raise TrackingError(f"tracking.uri={shown(uri)}: cannot open the database ({first_line(err.orig or err)}); check the "
                            "user, password and database name, or log locally with tracking.uri=sqlite:///mlflow.db.") from err
    finally:
        engine.dispose()
    _opened.add(uri)

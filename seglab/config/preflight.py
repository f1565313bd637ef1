"""Checks of the file system and the tracking store that can be made before TensorFlow loads, so a
wrong path fails in about a second instead of after an epoch: the checkpoint and cache directories
can be written, the data directory exists, the tracking store is a store.  Each failure is a
ConfigError naming the key, the path and the fix.  Nothing here imports TensorFlow or MLflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from seglab.config.schema import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file (sqlite.org/fileformat.html)
LOCAL_SCHEMES = ("file:",)


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
    check_store(cfg.tracking.uri)


def writable_dir(path: Path, key: str, value: object) -> None:
    """Create `path` if needed and write a file in it: the only test that also holds for root,
    read-only mounts and full disks (os.access answers for permissions only)."""
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


def _example(key: str) -> str:
    return {"data.cache": "./cache/data", "trainer.checkpoint_dir": "checkpoints", "tracking.uri": "sqlite:///mlflow.db"}.get(key, "./somewhere")


def check_store(uri: str, must_exist: bool = False, key: str = "tracking.uri") -> None:
    """A local store (an SQLite file, a `file:` directory) that cannot work: fail now, naming it.
    `must_exist` for tools that only read (predict, evaluate, report): they must not leave an
    empty `mlflow.db` behind when the user is in the wrong directory."""
    if uri.startswith("sqlite:"):
        _check_sqlite(uri, must_exist, key)
    elif uri.startswith(LOCAL_SCHEMES) or "://" not in uri:
        path = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
        if must_exist and not path.is_dir():
            raise ConfigError(f"{key}={uri}: no MLflow store at {path}; give the tracking URI the training run used.")
        writable_dir(path, key, uri)


def _check_sqlite(uri: str, must_exist: bool, key: str) -> None:
    if uri in ("sqlite://", "sqlite:///:memory:"):
        return
    if not uri.startswith("sqlite:///"):
        raise ConfigError(f"{key}={uri}: write an SQLite URI as sqlite:///relative/file.db or sqlite:////absolute/file.db.")
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).expanduser()
    if path.is_dir():
        raise ConfigError(f"{key}={uri}: {path} is a directory; give a database file, e.g. sqlite:///{path}/mlflow.db.")
    if path.exists():
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise ConfigError(
                f"{key}={uri}: {path} is not an SQLite database; point it at the mlflow.db seglab writes, or at a new file name."
            )
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


def check_output_outside_input(input_path: str, output_path: str) -> None:
    """`predict`: masks written inside the input folder would be read as images by the next run."""
    source, target = Path(input_path).resolve(), Path(output_path).resolve()
    if source.is_dir() and (target == source or source in target.parents):
        raise ConfigError(
            f"output={output_path} is inside input={input_path}: a second run would segment the masks themselves; "
            "choose an output directory outside the input."
        )

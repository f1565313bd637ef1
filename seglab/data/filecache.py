"""tf.data's file cache (`data.cache=PREFIX`): keyed by what a split holds, written by one run at a time.

The key digests the config that shapes the cached examples and the split's source files as its source
lists them (`Provenance.files`): each file's path, size and modification time, one `stat` each, never its
bytes.  Edit a mask, replace an image or add a pair, and the key changes: the old cache is never read again
(it stays on disk until you delete it).  A source without files (`data=shapes`) is keyed by its config.

tf.data fills a file cache during the first full pass and makes it readable only at the end of it (it writes
`<prefix>.index` last and reads a cache only when that file is there), so a pass cut short is never read.
But the `<prefix>_0.lockfile` it writes first outlives a killed writer, and refuses every later run with an
AlreadyExistsError mid-epoch, as it refuses a second run filling the same cache at the same time.  So a run
fills a cache only while it holds an exclusive lock on `<prefix>.writer` (flock: the kernel releases it when
the process ends, however it ends); taking it, the run removes what a dead writer left.  A run that finds the
lock held by another live run reads that split uncached, with a warning: same batches, no cache.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
from pathlib import Path

KEY_CHARS = 12

# The locks this process holds, by cache prefix.  Held until the process ends, as a lock on the cache being
# written must be: a later pipeline over the same split in this process (a sweep's next job) may use the cache.
_held: dict[str, int] = {}


def key(config: dict, source: dict, selection: str, files: list | None) -> str:
    """The digest of a split's content: `config` (the data settings that shape the cached examples), the
    source's description of the split and the `files` it reads (path, size, mtime_ns each, in order)."""
    described = {"config": config, "source": source, "selection": selection, "files": stamps(files or [])}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:KEY_CHARS]


def stamps(files: list, folder: Path | None = None) -> list:
    """[file, size, mtime_ns] of each of `files` (a missing one: [file, None, None]), never its bytes: a file replaced
    in place changes its size or its modification time, so its stamp.  Without `folder` each file is named by its
    absolute path; with it, `files` are names inside `folder`, kept as given and resolved from the folder (a third
    less time than from / over many files: coco's manifests)."""
    rows = []
    directory = os.open(folder, os.O_RDONLY) if folder is not None else None
    try:
        for file in files:
            name = file if directory is not None else os.path.abspath(file)
            try:
                stat = os.stat(name, dir_fd=directory)
                rows.append([name, stat.st_size, stat.st_mtime_ns])
            except FileNotFoundError:
                rows.append([name, None, None])
    finally:
        if directory is not None:
            os.close(directory)
    return rows


def complete(prefix: str) -> bool:
    """Whether tf.data finished the cache at `prefix` (it then reads it, and writes nothing)."""
    return Path(f"{prefix}.index").is_file()


def claim(prefix: str) -> bool:
    """Whether this run may use the file cache at `prefix`: it is complete (tf.data reads it), or this process
    holds its writer's lock (tf.data fills it).  False while another live run fills it: read the split uncached."""
    if prefix in _held or complete(prefix):
        return True
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{prefix}.writer", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return complete(prefix)  # the other run may have finished it in between
    except OSError:  # a file system without locks (some FUSE mounts): tf.data's own lockfile is all there is
        os.close(fd)
        return True
    _held[prefix] = fd
    if not complete(prefix):
        # No live run fills this cache (it would hold the lock): what is there is a dead writer's lockfile and
        # partial shards (tf.data names them <prefix>_<shard>.*), which would refuse or corrupt this run's pass.
        for leftover in glob.glob(f"{glob.escape(prefix)}_*"):
            Path(leftover).unlink(missing_ok=True)
    return True

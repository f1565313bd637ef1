"""Files and directories replaced whole or not at all (checkpoints, converted data shards, manifests,
exports, predicted masks).

A file is written under a temporary name in its own directory (so the rename stays on one file
system), then renamed over the target: a kill at any moment leaves the previous complete file or
the new one.  A directory (a SavedModel) is written as `NAME.tmp-<pid>/`; the previous one is moved
aside only once the new one is complete, so a kill leaves the previous directory, the new one, or
(between the two renames) none, never a mix.  The temporary name carries the writer's process id, so
a leftover of a dead writer can be told from a file another live process is still writing.  A failed
write (disk full, EFBIG past `ulimit -f`, read-only) is an OSError naming the target, not the
temporary name."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

_TEMPORARY = re.compile(r"\.(?:tmp|old)-?(\d+)")


def temporary(path: Path) -> Path:
    """`<name>.tmp<pid><suffix>`: the suffix kept, for writers that choose the format by it (`.keras`)."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}{path.suffix}")


def write(path: str | Path, write_to: Callable[[str], object]) -> None:
    """`write_to(temporary path)`, then the rename; on any error (or Ctrl-C) the temporary file goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        _named(path, write_to, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_dir(path: str | Path, write_to: Callable[[str], object]) -> None:
    """`write_to(NAME.tmp-<pid>)`, a directory it creates, then renamed to `path`: the previous `path`
    stays whole until the new one is complete, and is removed after (a directory cannot be renamed
    over a non-empty one, so it is moved aside to `NAME.old-<pid>` first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, aside = path.with_name(f"{path.name}.tmp-{os.getpid()}"), path.with_name(f"{path.name}.old-{os.getpid()}")
    try:
        _named(path, write_to, tmp)
        if path.exists():
            os.replace(path, aside)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _named(path: Path, write_to: Callable[[str], object], tmp: Path) -> None:
    """`write_to(tmp)`; an OSError that names no file, or names the temporary one, is raised again naming `path`."""
    try:
        write_to(str(tmp))
    except OSError as err:
        if err.filename is not None and not str(err.filename).startswith(str(tmp)):
            raise  # another file (an input), named already
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def write_bytes(path: str | Path, data: bytes) -> None:
    write(path, lambda tmp: Path(tmp).write_bytes(data))


def leftovers(directory: Path, name: str = "") -> list[Path]:
    """Temporary files (and directories) in `directory` whose writer is no longer running (an interrupted
    write); with `name`, only those of the target `name`."""
    found = []
    for candidate in directory.iterdir():
        match = _TEMPORARY.search(candidate.name)
        if match and candidate.name.startswith(name) and not _alive(int(match.group(1))):
            found.append(candidate)
    return found


def remove(paths: list[Path]) -> None:
    """Delete files and directories (e.g. `leftovers`)."""
    for path in paths:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True

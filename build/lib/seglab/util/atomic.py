"""Files replaced whole or not at all (checkpoints, converted data shards, manifests).

A file is written under a temporary name in its own directory (so the rename stays on one file
system), then renamed over the target: a kill at any moment leaves the previous complete file or
the new one.  The temporary name carries the writer's process id, so a leftover of a dead writer can
be told from a file another live process is still writing."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

_TEMPORARY = re.compile(r"\.tmp(\d+)")


def temporary(path: Path) -> Path:
    """`<name>.tmp<pid><suffix>`: the suffix kept, for writers that choose the format by it (`.keras`)."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}{path.suffix}")


def write(path: str | Path, write_to: Callable[[str], object]) -> None:
    """`write_to(temporary path)`, then the rename; on any error (or Ctrl-C) the temporary file goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        write_to(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    write(path, lambda tmp: Path(tmp).write_bytes(data))


def leftovers(directory: Path) -> list[Path]:
    """Temporary files in `directory` whose writer is no longer running (an interrupted write)."""
    found = []
    for candidate in directory.iterdir():
        match = _TEMPORARY.search(candidate.name)
        if match and not _alive(int(match.group(1))):
            found.append(candidate)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True

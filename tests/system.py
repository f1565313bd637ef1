"""System programs the tracking tests need (PostgreSQL, docker-compose, Chromium): found, or the
test stops clearly.  In CI (CI=true) a missing program fails the test, since .ci/run installs it;
on a developer machine without it the test is skipped."""

from __future__ import annotations

import glob
import os
import shutil

import pytest


def missing(what: str, package: str) -> None:
    message = f"{what} not found; install it with `apt-get install -y {package}` (.ci/run does)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"`{name}`", package)
    return path


def postgres_bin() -> str:
    """Debian keeps initdb and pg_ctl outside PATH, in /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    if shutil.which("initdb"):
        return os.path.dirname(shutil.which("initdb"))
    missing("PostgreSQL's initdb", "postgresql")

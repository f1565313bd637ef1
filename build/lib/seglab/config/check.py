"""The error every config check raises, and the one-line check the group schemas are written with."""

from __future__ import annotations

from typing import Any

from seglab.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value is out of range or inconsistent; the message names the key and the fix."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}.")

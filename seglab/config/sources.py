"""A data source's schema is its builder's signature.

A source is one module and one YAML: `conf/data/NAME.yaml` gives `source._target_` and a value for each argument
of the module's `build(...) -> Splits`; the signature declares the keys and their types, and the module's optional
`check(**arguments)` the ranges (raising through `seglab.config.check.require`).  This module checks a
`data.source` node against both before TensorFlow loads: source modules import TensorFlow lazily.  (The first
sources, shapes and pets, still have dataclasses in seglab/config/data.py; a node typed by one is left to it.)
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any, Callable

from seglab.config.check import ConfigError, require
from seglab.errors import unknown_key_message


def builder(target: str) -> Callable:
    """The function a `_target_` names, imported without TensorFlow."""
    module_name, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"data.source._target_={target!r} is not allowed: name a function, module.build") from None


def check_source(source: dict[str, Any]) -> None:
    """Unknown or missing keys, wrong types, then the module's own `check`: each one line naming the key."""
    build = builder(source.get("_target_", ""))
    parameters = inspect.signature(build).parameters
    arguments = {key: value for key, value in source.items() if key != "_target_"}
    for key in arguments:
        if key not in parameters:
            raise ConfigError(unknown_key_message(f"data.source.{key}", list(parameters)))
    for name, parameter in parameters.items():
        require(name in arguments or parameter.default is not inspect.Parameter.empty, f"data.source.{name}", None,
                f"give it a value (conf/data/*.yaml of {build.__module__} lists every argument)")
    hints = typing.get_type_hints(build)
    for key, value in arguments.items():
        expected = hints.get(key)
        require(expected is None or _fits(value, expected), f"data.source.{key}", value, f"use {_spelt(expected)}")
    check = getattr(importlib.import_module(build.__module__), "check", None)
    if check is not None:
        check(**arguments)


def _fits(value: Any, expected: Any) -> bool:
    """Whether a YAML value fits an annotation: the plain types, Optional/unions, list, dict, Any."""
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin in (list, tuple) or expected in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _spelt(expected: Any) -> str:
    """`int | None` -> 'an int or null'."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
             list: "a list", dict: "a mapping"}
    options = typing.get_args(expected) if typing.get_origin(expected) in (typing.Union, types.UnionType) else (expected,)
    return " or ".join(names.get(typing.get_origin(option) or option, str(option)) for option in options)

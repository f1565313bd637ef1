"""A data source's schema is its builder's signature.

A source is one module and one YAML: `conf/data/NAME.yaml` gives `source._target_` and a value for each argument
of the module's `build(...) -> Splits`; the signature declares the keys and their types, and the module's optional
`check(**arguments)` the ranges (raising through `seglab.config.check.require`).  This module checks a
`data.source` node against both before TensorFlow loads: source modules import TensorFlow lazily.  A module whose
data can name its classes says so with an optional `class_names(**arguments) -> list | None`, called with the same
arguments as `build` (folder: a classes file beside the data; coco: background and the categories), which refuses a
data.num_classes that contradicts them in one line: `fill_classes` takes them where the config leaves
data.class_names null.  (The first sources, shapes and pets, still have dataclasses in seglab/config/data.py; a
node typed by one is left to it.)
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

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


def fill_classes(data) -> None:
    """data.class_names and data.num_classes left null (conf/data/folder.yaml's and coco.yaml's defaults) filled in
    the composed config: the names from the source module's `class_names(**data.source)` (before the source's
    checks: it returns None for arguments of the wrong kind, which they then name), else class_0 .. class_<N-1>;
    the count from the names.  A count that nothing gives is left null for DataConfig's check to name."""
    names, count, source = data.get("class_names"), data.get("num_classes"), data.get("source")
    if names is not None and count is not None:
        return
    if names is None and source is not None and source.get("_target_"):
        read = getattr(importlib.import_module(builder(source.get("_target_")).__module__), "class_names", None)
        if read is not None:
            arguments = OmegaConf.to_container(source, resolve=True) if isinstance(source, DictConfig) else dict(source)
            found = read(**{key: value for key, value in arguments.items() if key != "_target_"})
            if found is not None:
                names = data.class_names = [str(name) for name in found]
    if count is None and names is not None:
        count = data.num_classes = len(names)
    if names is None and count is not None:
        data.class_names = placeholder_names(count)


def placeholder_names(count: int) -> list[str]:
    """class_0 .. class_<count-1>: the names of classes nothing names (a run's, and what inspect prints)."""
    return [f"class_{label}" for label in range(count)]


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

"""The range of each key as the schema checks it, read from the schema's own `require` calls (for
`--help`), so the range is written once: in the check that enforces it.

`require(cond, "model.depth", value, "use an integer from 1 to 6 (the paper uses 4)")` gives
`model.depth: integer from 1 to 6`.  Only checks whose fix starts with "use" or "choose" state a
range; a fix that depends on another key (`f"... {self.num_classes - 1}"`) or explains a
combination ("false needs the background class ...") is not one and is left out.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import sys
import textwrap

_RANGE_START = re.compile(r"^(use|choose)\s+(an?\s+)?")
# An aside in parentheses (an example, a reason, "0: off"): the YAML comment beside the key says it.  An
# interval such as (0, 1) has no letters and stays.
_ASIDE = re.compile(r"\s*\((?=[^()]*[A-Za-z])[^()]*\)")


@functools.cache
def of_schema(schema: type) -> dict[str, str]:
    """{dotted key: its range} from the `require` calls in `schema` and its base classes (the first per key)."""
    found: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if cls.__module__.startswith("seglab.config"):
            found.update({k: v for k, v in _requires(cls).items() if k not in found})
    return found


_FIELD_COMMENT = re.compile(r"^\s+(\w+):[^#=]+(?:=[^#]*)?#\s*(.+)$")


@functools.cache
def field_comments(schema: type) -> dict[str, str]:
    """{field: the comment beside it} in `schema` and its base classes (for `--help`: a key whose YAML says
    nothing of it, e.g. in a user's own option, is described by its schema)."""
    found: dict[str, str] = {}
    for cls in schema.__mro__:
        if cls.__module__.startswith("seglab.config"):
            for line in inspect.getsource(cls).splitlines():
                m = _FIELD_COMMENT.match(line)
                if m and not m.group(2).startswith("noqa"):
                    found.setdefault(m.group(1), m.group(2).strip())
    return found


def _requires(cls: type) -> dict[str, str]:
    """The ranges in `cls`'s checks, and in the module's helpers it calls (e.g. `_check_bn_momentum`)."""
    namespace = vars(sys.modules[cls.__module__])
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    helpers = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    trees = [tree] + [ast.parse(inspect.getsource(namespace[name])) for name in sorted(helpers)
                      if inspect.isfunction(namespace.get(name)) and namespace[name].__module__ == cls.__module__]
    found: dict[str, str] = {}
    for call in (node for t in trees for node in ast.walk(t)):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "require" and len(call.args) == 4):
            continue
        key, allowed = call.args[1], call.args[3]
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            continue
        try:  # a constant, or an f-string of module-level names (e.g. the list of PRECISIONS)
            text = eval(compile(ast.Expression(allowed), "<schema>", "eval"), dict(namespace))  # noqa: S307  our own source
        except (NameError, AttributeError):  # it names the checked object (self): a condition on other keys, not a range
            continue
        if isinstance(text, str) and _RANGE_START.match(text):
            found.setdefault(key.value, compact(text))
    return found


def compact(allowed: str) -> str:
    """'use an integer >= 0 (0: no grid)' -> 'integer >= 0'; 'choose one of a, b' -> 'one of a, b';
    'use a momentum in (0, 1): 0.9 follows ...' -> 'momentum in (0, 1)'."""
    allowed = _ASIDE.sub("", allowed.strip())  # first, so that a colon inside an aside ("(0: off)") cuts nothing
    allowed = re.split(r"[:;]\s", allowed)[0]  # what follows says why
    return _RANGE_START.sub("", allowed).rstrip(".").strip()

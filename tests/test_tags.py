"""Every namespaced tag key is spelled in seglab/tracking/tags.py and nowhere else in seglab/."""

import ast
from pathlib import Path

from seglab.tracking import tags

PACKAGE = Path(tags.__file__).resolve().parents[1]
# Namespaced keys only (`seglab.pid`, `mlflow.parentRunId`): a bare word such as `error` or `parent`
# is too common a string to search for.
KEYS = {value for name, value in vars(tags).items() if isinstance(value, str) and not name.startswith("_") and "." in value}
# Being rewritten elsewhere (issue 20): these two files keep their literals until that lands; a key
# spelled anywhere else, or a new one in them, still fails.
PENDING: set[tuple[str, str]] = set()  # (file, key) pairs waiting for a rewrite: none
NOT_TAGS = {("seglab/data/__main__.py", "seglab.data")}  # the program's name (`python -m seglab.data`), equal to a key by chance


def spelled_keys(source: str) -> list[tuple[int, str]]:
    """(line, key) for each string constant of `source` equal to a tag key (f-string parts included)."""
    return sorted((node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in KEYS)


def test_spelled_keys_finds_a_key_in_a_string_and_in_an_f_string_part():
    source = 'a = "seglab.pid"\nb = f"seglab.heartbeat{x}"\nc = f"{x}" + "seglab.pid " + f"{y}.seglab.host"\nd = {"mlflow.parentRunId": 1}'
    assert spelled_keys(source) == [(1, "seglab.pid"), (2, "seglab.heartbeat"), (4, "mlflow.parentRunId")]


def test_no_tag_key_is_spelled_outside_tags_py():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        if name != "seglab/tracking/tags.py":
            found += [f"{name}:{line}: {key!r}" for line, key in spelled_keys(path.read_text()) if (name, key) not in PENDING | NOT_TAGS]
    assert not found, "tag keys spelled outside seglab/tracking/tags.py (use its constants):\n" + "\n".join(found)

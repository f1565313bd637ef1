"""`python -m seglab --help`: written from conf/ and the schema when it is asked for, so it cannot drift.

Hydra renders `hydra.help.template` (conf/hydra/help/seglab.yaml), which is `${seglab_help:}`: the
resolver below, given the composed config, lists the config groups with their options (each
option's first comment line), the main keys with their current value, schema type and the comment
written beside them in the YAML, and examples.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from seglab.config import ranges
from seglab.config.schema import CONF_DIR

OPTIONAL_GROUPS = ("debug", "experiment", "hparams_search")  # added with +GROUP=OPTION
EXAMPLES = """\
  python -m seglab                                        # defaults: model=unet loss=ce data=shapes
  python -m seglab model=fcn8 loss=dice trainer.epochs=3  # other options and values
  python -m seglab +debug=fast                            # one tiny epoch end to end
  python -m seglab --multirun model.base_filters=8,16     # a sweep: one MLflow parent run, a child per job
  python -m seglab --cfg job                              # print the whole composed config (no TensorFlow)
  python -m seglab.report SWEEP                           # a sweep's jobs as a table"""
HELP_FLAGS = ("--help", "-h")
KEY_COLUMN_MAX = 40
_KEY_LINE = re.compile(r"^( *)(\w+):\s*(.*?)(?:\s+#\s*(.*))?$")


def print_usage(argv: list[str], doc: str) -> bool:
    """`--help` or `-h` among a command's arguments: print its usage (its module docstring) and say so.
    Checked first, so that the answer comes before any key is read and before TensorFlow loads."""
    if not any(arg in HELP_FLAGS for arg in argv):
        return False
    print(doc.strip())
    return True


def arguments(argv: list[str] | None, doc: str) -> list[str] | None:
    """A command's start: its log lines as `[LEVEL] message` from INFO, its arguments (the command line's
    when `argv` is None), or None once `--help` has printed its usage (`doc`)."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    return None if print_usage(argv, doc) else argv


def options(group: str, dirs: list[Path] | None = None) -> dict[str, str]:
    """{option: its first comment line} for every <dir>/<group>/<option>.yaml of the config directories
    (`dirs`: seglab's conf/ and a user's --config-dir, in Hydra's search order; the first holding an option wins)."""
    found: dict[str, str] = {}
    for directory in dirs or [Path(CONF_DIR)]:
        for path in sorted(Path(directory, group).glob("*.yaml")):
            if path.stem not in found:
                found[path.stem] = _summary(path)
    return dict(sorted(found.items()))


def _summary(path: Path) -> str:
    """The first sentence (or the clause before a colon) of the comment block that opens a YAML file."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    head = " ".join(line.lstrip("# ").strip() for line in itertools.takewhile(lambda l: l.startswith("#"), lines))
    return re.split(r"(?<=[.:])(?<! al\.)\s", head)[0].rstrip(":")


def config_dirs(cfg: DictConfig) -> list[Path]:
    """The directories Hydra composed from (seglab's conf/, then a --config-dir), from the composed config."""
    sources = cfg.hydra.runtime.get("config_sources") or []
    dirs = [Path(source.path) for source in sources if source.schema == "file"]
    return dirs or [Path(CONF_DIR)]


def option_file(dirs: list[Path], group: str, option: str) -> Path | None:
    """The YAML of `group=option` (a user's option lives in their --config-dir), None if none holds it."""
    return next((path for path in (Path(d, group, f"{option}.yaml") for d in dirs) if path.is_file()), None)


def _comments(path: Path | None) -> dict[str, str]:
    """{dotted key: what the YAML says of it} in one YAML file: the comment beside the key (with the comment
    lines indented under it that continue it), else the first sentences of the comment block just above it."""
    found: dict[str, str] = {}
    above: list[str] = []
    path_to: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    beside_of: tuple[int, str] | None = None  # (indent, dotted key) of the key line whose beside comment may go on
    for line in path.read_text().splitlines() if path else []:
        indent = len(line) - len(line.lstrip())
        if line.lstrip().startswith("#"):
            text = line.lstrip("# ").strip()
            if beside_of and indent > beside_of[0]:
                found[beside_of[1]] = f"{found[beside_of[1]]} {text}"
            else:
                beside_of = None
                above.append(text)
            continue
        beside_of = None
        m = _KEY_LINE.match(line)
        if m:
            indent, key, beside = len(m.group(1)), m.group(2), m.group(4)
            path_to = [(i, k) for i, k in path_to if i < indent] + [(indent, key)]
            dotted = ".".join(k for _, k in path_to)
            about = beside or _first_sentences(" ".join(above))
            if about:
                found[dotted] = about
            beside_of = (indent, dotted) if beside else None
        above = []
    return found


def _first_sentences(text: str, at_least: int = 40) -> str:
    """The first sentences of `text` that say something: at least `at_least` characters ("XLA." alone does not)."""
    taken = ""
    for sentence in re.split(r"(?<=\.)\s+", text):
        taken = f"{taken} {sentence}".strip()
        if len(taken) >= at_least:
            break
    return taken


def _type(cfg: DictConfig, key: str) -> str:
    node = cfg._get_node(key)
    ref = getattr(node._metadata, "ref_type", None) if node is not None else None
    name = getattr(ref, "__name__", None) or str(ref).replace("typing.", "")
    return "" if ref is None or name == "Any" else name


def _value(cfg: DictConfig, key: str) -> str:
    try:
        return str(OmegaConf.select(cfg, key, throw_on_missing=True))
    except Exception:  # an interpolation that cannot be resolved here (e.g. an unset environment variable)
        return OmegaConf.to_container(cfg, resolve=False).get(key, "?")


def groups(cfg: DictConfig) -> list[str]:
    """The groups chosen with GROUP=OPTION, in conf/config.yaml's defaults order."""
    defaults = OmegaConf.load(Path(CONF_DIR, "config.yaml")).defaults
    named = [next(iter(d)) for d in defaults if isinstance(d, DictConfig)]
    return [g for g in named if g in cfg.hydra.runtime.choices and Path(CONF_DIR, g).is_dir()]


def _leaves(node: DictConfig, prefix: str = "") -> list[tuple[DictConfig, str, str]]:
    """(the node holding it, its key there, its dotted key under `node`) for every value under `node`."""
    found = []
    for key in node:
        child = node._get_node(key)
        if key == "_target_":
            continue
        if isinstance(child, DictConfig):
            found += [(holder, k, f"{key}.{dotted}") for holder, k, dotted in _leaves(node[key])]
        else:
            found.append((node, key, key))
    return found


def main_keys(cfg: DictConfig) -> list[tuple[str, str, str, str]]:
    """(key, type, current value, range and comment) for the top-level keys and every key of each
    chosen group option (model.*, loss.*, data.source.*, ...); the ranges are the schema's checks."""
    choices = cfg.hydra.runtime.choices
    rows = []
    dirs = config_dirs(cfg)
    top = _comments(Path(CONF_DIR, "config.yaml"))
    top_ranges = ranges.of_schema(OmegaConf.get_type(cfg))
    for key in cfg:
        if key != "hydra" and not isinstance(cfg._get_node(key), DictConfig):
            rows.append((key, _type(cfg, key), _value(cfg, key), _about(top_ranges.get(key), top.get(key))))
    for group in groups(cfg):
        comments = _comments(option_file(dirs, group, choices[group]))  # None: an option of no file (a schema's own)
        for holder, key, dotted in _leaves(cfg[group]):
            found = ranges.of_schema(OmegaConf.get_type(holder)) | top_ranges
            name = f"{group}.{dotted}"
            described = comments.get(dotted) or ranges.field_comments(OmegaConf.get_type(holder)).get(str(key))
            rows.append((name, _type(holder, key), _value(holder, key), _about(found.get(name), described)))
    return rows


def _about(allowed: str | None, comment: str | None) -> str:
    return " ".join(filter(None, (f"[{allowed}]" if allowed else None, comment)))


def render(_root_: DictConfig) -> str:
    cfg = _root_
    choices = cfg.hydra.runtime.choices
    lines = [
        "seglab: semantic segmentation experiments in TensorFlow/Keras, configured with Hydra, tracked in MLflow.",
        "",
        "Usage: python -m seglab [GROUP=OPTION ...] [+GROUP=OPTION ...] [KEY=VALUE ...] [--multirun]",
        "",
        "== Config groups (GROUP=OPTION; * marks the option chosen now) ==",
    ]
    for group in (*groups(cfg), *OPTIONAL_GROUPS):
        prefix = "+" if group in OPTIONAL_GROUPS else ""
        lines.append(f"{prefix}{group}:")
        for name, about in options(group, config_dirs(cfg)).items():
            mark = "*" if choices.get(group) == name else " "
            lines.append(f"  {mark} {name:<30} {about}".rstrip())
    lines += ["", "== Keys of the chosen options (KEY=VALUE; type, value now, [range the schema checks], what it does) =="]
    rows = main_keys(cfg)
    width = min(max(len(f"{k}={v}") for k, _, v, _ in rows), KEY_COLUMN_MAX)  # a long list value overflows
    for key, kind, value, about in rows:
        lines.append(f"  {f'{key}={value}':<{width}}  {kind:<6} {about}".rstrip())
    lines += [
        "", "Another option's keys: name it too (e.g. python -m seglab model=unet_mobilenet --help). The ranges are",
        "checked by seglab/config/ before TensorFlow loads; `python -m seglab --cfg job` prints the composed config.",
        "", "== Examples ==", EXAMPLES, "",
        "Hydra's own flags (--cfg, --multirun, --info, shell completion, ...): python -m seglab --hydra-help",
    ]
    return "\n".join(lines).replace("$", "$$")  # Hydra fills the template with string.Template: a literal $ is $$


OmegaConf.register_new_resolver("seglab_help", render, replace=True)

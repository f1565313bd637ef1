"""`python -m seglab.data inspect PATH [data.source.KEY=VALUE ...] [--write my_conf/data/NAME.yaml]`: what a data set holds and how to train on it.

Tries every conf/data/*.yaml whose source module has a `find(path)` (`folder` last: it reads the most layouts;
a module whose data set has fixed classes, `CLASS_NAMES`, or which paints its masks from classes it reads itself,
`PAINTS_ITS_CLASSES` (coco: the categories), is read with its own num_classes and names them),
builds the splits with the arguments the first one returns, and reads them once: images per split, their sizes
and aspect, the classes found (labels, or the colours of colour-coded masks) with their share of the pixels, and
every problem (the source's warnings, its refusal).  Its last line is the command that trains on it; `--write`
puts the same settings in a data option for `--config-dir`.
"""

# Lazy imports: the source modules import TensorFlow when they build the splits, after the arguments are checked.

from __future__ import annotations

import importlib
import logging
import math
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import yaml
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from seglab import console, errors
from seglab.config import schema, sources
from seglab.data import EMPTY_SPLIT_FIX, SCAN_CLASSES, DataError

GENERIC = "folder"  # reads the most layouts, so it is asked last
SIDE_MULTIPLE = 32  # the largest downsampling of seglab's models: each side a multiple of it fits all of them
LONGEST_SIDE = 512  # a suggested input size no larger than this on its longer side (CPU-friendly)
VOID = 255  # the usual label of unlabelled pixels in 8-bit masks
WIDE_VOID = 65535  # the void label inspect prints for more classes than VOID leaves room for (16-bit label masks)
MEMORY_CACHE_LIMIT = 2 << 30  # bytes: decoded examples under this are kept in memory (data.cache=memory); else streamed
CACHED_BYTES_PER_PIXEL = 3 + 4  # a cached example: uint8 RGB image and int32 mask at the model's size
SHOWN_REFUSALS = 10  # a split's masks refused inside the pipeline (each its own line) shown, then how many more


@dataclass
class Found:
    """What inspect learnt about PATH."""

    name: str  # the data option (conf/data/NAME.yaml) that reads it
    arguments: dict  # data.source.* that read it
    images: dict = field(default_factory=dict)  # split -> count
    sizes: Counter = field(default_factory=Counter)  # (height, width) -> images
    pixels: Counter = field(default_factory=Counter)  # label -> pixels
    problems: list = field(default_factory=list)
    refused: str = ""  # why the source could not read it
    class_names: list | None = None
    notes: list = field(default_factory=list)  # the source's own remarks (its `notes`), e.g. other label sets


def candidates() -> list[tuple[str, object]]:
    """(option name, source module) for each conf/data/*.yaml whose source module has `find`, folder last."""
    found = []
    for file in sorted(Path(schema.CONF_DIR, "data").glob("*.yaml"), key=lambda f: (f.stem == GENERIC, f.stem)):
        target = ((yaml.safe_load(file.read_text()) or {}).get("source") or {}).get("_target_", "")
        try:
            module = importlib.import_module(target.rpartition(".")[0])
        except ImportError:
            continue
        if callable(getattr(module, "find", None)):
            found.append((file.stem, module))
    return found


def identify(path: Path) -> tuple[str, object, dict]:
    for name, module in candidates():
        arguments = module.find(path)
        if arguments is not None:
            return name, module, dict(arguments)
    names = ", ".join(name for name, _ in candidates())
    raise DataError(f"{path}: none of the data layouts ({names}) reads it: see docs/own-data.md for the layouts.")


def chosen(name: str, given: list[str]) -> dict:
    """data.source.KEY=VALUE words as the data option's source arguments, parsed and checked as `python -m seglab`
    would (Hydra's grammar, the source's keys and ranges): a typo is refused here, not after the scan."""
    keys = {word: word.split("=", 1)[0].removeprefix("data.source.") for word in given}
    bad = next((word for word, key in keys.items() if not word.startswith("data.source.") or "." in key), None)
    if bad is not None:
        raise errors.UserError(f"{bad}: inspect takes data.source.KEY=VALUE settings only (the rest it finds out), "
                               f"e.g. data.source.mask_dir=SegmentationClass/element")
    if not given:
        return {}
    # PATH itself is not composed: Hydra's grammar refuses a path with a comma or brackets, and only `given` is taken.
    cfg = schema.compose([f"data={name}", "data.source.path=.", *given], check=False)
    if cfg.data.num_classes is None or cfg.data.class_names is None:  # the classes are what the scan finds out
        cfg.data.num_classes = cfg.data.num_classes or 2
        cfg.data.class_names = sources.placeholder_names(cfg.data.num_classes)
    schema.validate(cfg)
    source = OmegaConf.to_container(cfg.data.source, resolve=True)
    return {key: source[key] for key in keys.values()}


def source_arguments(name: str, arguments: dict, fixed_classes: bool = False) -> dict:
    """The option's data.source with `arguments` over it, its interpolations resolved for a scan (with any
    num_classes, unless the data set's classes are fixed)."""
    option = OmegaConf.load(Path(schema.CONF_DIR, "data", f"{name}.yaml"))
    option.pop("defaults", None)
    if not fixed_classes:
        option.num_classes = arguments.get("num_classes", SCAN_CLASSES)
    root = OmegaConf.create({"deterministic": True, "seed": 0, "data": option})
    source = OmegaConf.to_container(root.data.source, resolve=True)
    source.pop("_target_")
    return {**source, **arguments}


def scan(path: Path, given: list[str] = ()) -> Found:
    """What PATH holds; `given`: data.source.KEY=VALUE settings over what `find` guessed (a layout it cannot guess)."""
    try:
        name, module, arguments = identify(path)
    except DataError:
        if not given:
            raise
        name, arguments = GENERIC, {"path": str(path)}
        module = dict(candidates())[GENERIC]
    found = Found(name, {**arguments, **chosen(name, given)})
    found.notes = getattr(module, "notes", lambda **_: [])(**found.arguments)
    fixed = getattr(module, "CLASS_NAMES", None)
    try:  # a source's classes file or categories: a file it cannot read is a problem of the report, as the build's are
        found.class_names = list(fixed) if fixed else getattr(module, "class_names", lambda **_: None)(**found.arguments)
    except (DataError, errors.UserError) as err:
        found.problems.append(errors.one_line(err))
    build = getattr(module, OmegaConf.load(Path(schema.CONF_DIR, "data", f"{name}.yaml")).source._target_.rpartition(".")[2])
    warnings = _Collect()
    logging.getLogger("seglab").addHandler(warnings)
    try:
        splits = _build(build, module, found)
    finally:
        logging.getLogger("seglab").removeHandler(warnings)
    found.problems += warnings.lines
    if splits is None:
        return found
    first = {}  # label -> (split, example name) where it is first seen
    for split in ("train", "val", "test"):
        dataset = getattr(splits, split)
        if dataset is not None:
            found.images[split] = _count(dataset, found, split, getattr(splits.about.get(split), "names", None), first)
    _beyond_the_names(found, first)
    for split in [split for split, count in found.images.items() if not count]:
        found.problems.append(f"the {split} split holds no image: {EMPTY_SPLIT_FIX}")
        found.refused = found.refused or f"an empty {split} split"
    return found


def _beyond_the_names(found: Found, first: dict) -> None:
    """A problem, and a refusal, for each label past the classes the data set's own names give (a classes file, a
    one-hot mask's channels): a run with the printed command would stop at it."""
    if not found.class_names:
        return
    void = void_label(found)
    for label in sorted(label for label in found.pixels if label >= len(found.class_names) and label != void):
        split, name = first[label]
        found.problems.append(f"label {label} ({found.pixels[label]} pixels; first in {name}, {split} split) is past the "
                              f"{len(found.class_names)} classes named ({', '.join(map(str, found.class_names))}): "
                              f"name it in the classes file, or map it with data.source.label_map")
        found.refused = found.refused or f"labels past the {len(found.class_names)} named classes (problems above)"


def _build(build, module, found: Found):
    """The splits, or None with the source's refusal among the problems; colour masks without a colour table (the
    source's `NoColourTable`) are read through the colours the masks hold."""
    try:
        fixed = hasattr(module, "CLASS_NAMES") or getattr(module, "PAINTS_ITS_CLASSES", False)
        return build(**source_arguments(found.name, found.arguments, fixed_classes=fixed))
    except DataError as err:
        no_table = isinstance(err, getattr(module, "NoColourTable", ())) and "colors" not in found.arguments
        # Every mask's colours (inspect reads them all anyway): a class first seen late is in the table too.
        colours = getattr(module, "mask_colours", lambda **_: [])(**found.arguments) if no_table else []
        if not colours:
            found.refused = errors.one_line(err)
            found.problems.append(found.refused)
            return None
        found.arguments["colors"] = [list(c) for c in colours]
        return _build(build, module, found)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _count(dataset, found: Found, split: str, names: list | None = None, first: dict | None = None) -> int:
    """The split's examples, their sizes and labels counted into `found`; `first`: label -> (split, the example's
    name in `names`, else its index), where each label is first seen.  An example the source refuses inside
    the pipeline (a colour outside the table, a label its label_map does not name) is a problem, and a refusal:
    the count goes on past it, so that every such mask is reported, not only the first."""
    import tensorflow as tf  # the splits are tf.data pipelines; only their refusal's type is needed here

    images, refused, examples, position = 0, Counter(), dataset.as_numpy_iterator(), -1
    while True:
        position += 1  # the example's place in the split, refused ones too (`names` is in that order)
        try:
            image, mask = next(examples)
        except StopIteration:
            break
        except tf.errors.InvalidArgumentError as err:  # that example only: the iterator goes on with the next
            refused[errors.explain(err) or errors.one_line(err.message.split(" [[")[0])] += 1
            continue
        images += 1
        found.sizes[image.shape[:2]] += 1
        labels, pixels = np.unique(mask, return_counts=True)
        found.pixels.update(dict(zip(labels.tolist(), pixels.tolist())))
        for label in labels.tolist() if first is not None else ():
            first.setdefault(label, (split, names[position] if names else f"example {position}"))
    lines = [f"{split}: {count} examples refused: {line}" if count > 1 else f"{split}: {line}" for line, count in refused.items()]
    found.problems += lines[:SHOWN_REFUSALS] + [f"{split}: {len(lines) - SHOWN_REFUSALS} more refusals like these"] * (len(lines) > SHOWN_REFUSALS)
    if refused and not found.refused:
        found.refused = f"{sum(refused.values())} {split} example(s) refused (problems above); fix them, then inspect again"
    return images


def suggested_size(height: int, width: int) -> tuple[int, int]:
    """The frame scaled only if its longer side is past LONGEST_SIDE, then each side rounded UP to a multiple of
    SIDE_MULTIPLE: with data.resize=fit the frame is then padded, never shrunk (rounding to the nearest multiple
    shrank a 144x192 frame to 128x171 inside [128, 192], and training lost to a plain script at the full size)."""
    scale = min(1.0, LONGEST_SIDE / max(height, width))
    return tuple(max(SIDE_MULTIPLE, math.ceil(round(side * scale, 6) / SIDE_MULTIPLE) * SIDE_MULTIPLE) for side in (height, width))


def void_label(found: Found) -> int | None:
    """VOID when the masks hold it above their other labels (CamVid's and VOC's unlabelled pixels)."""
    labels = sorted(found.pixels)
    return VOID if VOID in found.pixels and labels[-1] == VOID and len(labels) > 1 else None


def label_map(found: Found) -> dict[int, int] | None:
    """data.source.label_map for masks whose values are not class ids, where the source takes one (folder):
    0 and 255 only, a binary mask (255 is the object, not void: one class and void would train nothing), or a few
    values spread over 0..255 (grey levels, e.g. 0, 64, 128) without a classes file: each value a class, in order; a 255
    above them stays void, as in CamVid's and VOC's masks (the report says so: add it to the map if it is a class)."""
    source = OmegaConf.load(Path(schema.CONF_DIR, "data", f"{found.name}.yaml")).source
    if "label_map" not in source or found.arguments.get("colors") or found.arguments.get("label_map") is not None:
        return None
    void = void_label(found)
    kept = sorted(label for label in found.pixels if label != void)
    if kept == [0] and void is not None:
        return {0: 0, void: 1}
    if not found.class_names and len(kept) >= 2 and kept[-1] + 1 > 2 * len(kept):
        return {label: i for i, label in enumerate(kept)}  # a void 255 stays void (data.ignore_index)
    return None


def settings(found: Found) -> dict:
    """The data.* keys that train on it (nested, as in a data option)."""
    mapping, void = label_map(found), void_label(found)
    source = {**found.arguments, "label_map": mapping} if mapping else found.arguments
    if mapping:  # every value a class: none is void
        classes, void = len(mapping), None
        names = ["background", "foreground"] if classes == 2 else sources.placeholder_names(classes)
    else:
        classes = max([label for label in found.pixels if label != void], default=0) + 1
        names = found.class_names if found.class_names and len(found.class_names) >= classes else None
    colours = found.arguments.get("colors")
    if names is None:
        names = [f"r{r}_g{g}_b{b}" for r, g, b in colours] if colours else sources.placeholder_names(classes)
    classes = max(classes, len(names))
    unused = VOID if classes <= VOID else WIDE_VOID  # fit's padding needs a label that is no class
    size, _, fits = decoded(found)
    return {"num_classes": classes, "class_names": names, "ignore_index": void if void is not None else unused,
            "image_size": list(size), "resize": "fit", "source": source, "cache": "memory" if fits else None}


def decoded(found: Found) -> tuple[tuple[int, int], int, bool]:
    """(the size inspect suggests, the bytes data.cache=memory holds at it, whether they are under
    MEMORY_CACHE_LIMIT): every split's decoded examples, which a run keeps (train and val; test too when a sweep
    scores it)."""
    size = suggested_size(*found.sizes.most_common(1)[0][0])
    held = sum(found.images.values()) * size[0] * size[1] * CACHED_BYTES_PER_PIXEL
    return size, held, held < MEMORY_CACHE_LIMIT


def overrides(found: Found, values: dict) -> list[str]:
    """`data=NAME key=value ...`, composed and checked first: one line (a DataError) where the runner would refuse it
    (e.g. a classes file's name the schema refuses), never a command that fails, nor settings quietly changed."""
    def spelt(value):
        if isinstance(value, dict):  # {0:0,255:1}: no space, one word in a shell
            return "{" + ",".join(f"{spelt(k)}:{spelt(v)}" for k, v in value.items()) + "}"
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(map(spelt, value)) + "]"
        if isinstance(value, str):
            return hydra_string(value)
        return yaml.safe_dump(value, width=math.inf).strip().removesuffix("\n...")
    pairs = [f"data.source.{key}={spelt(value)}" for key, value in values["source"].items()]
    pairs += [f"data.{key}={spelt(values[key])}" for key in ("num_classes", "class_names", "ignore_index", "image_size", "resize")]
    pairs += [f"data.cache={values['cache']}"] * (values["cache"] is not None)  # else data=NAME's default: streamed
    try:  # what it prints, the runner takes: checked as `python -m seglab` checks it
        schema.compose([f"data={found.name}", *pairs])
    except (errors.UserError, HydraException, OmegaConfBaseException) as err:
        raise DataError(f"{found.arguments.get('path')}: the settings found would be refused: "
                        f"{errors.explain(err) or errors.one_line(err)}") from None
    return [f"data={found.name}", *pairs]


def hydra_string(text: str) -> str:
    """`text` as Hydra's override grammar reads it back: as it is where it is a plain word (road, data/my_set), else
    quoted (a path with a space, comma, bracket, quote, colon, `~`, `@` or non-ASCII letter; a word YAML reads as a
    number, bool or null), a quote and the backslashes before a quote or the end escaped, and `${` not an interpolation."""
    if re.fullmatch(r"[A-Za-z0-9_./+-]+", text) and yaml.safe_load(text) == text:
        return text
    body = re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), text).replace("${", "\\${")
    return f"'{body}'"


def command_line(words: list[str]) -> str:
    """`python -m seglab WORD ...` as a shell reads it back: a word with brackets, braces, spaces (a class name)
    or quotes is quoted (bash would expand {0:0,255:1} into two words; zsh would glob [a,b])."""
    return " ".join(["python -m seglab", *map(shlex.quote, words)])


def report(path: Path, found: Found) -> list[str]:
    """The lines inspect prints before the command."""
    lines = [f"{path}: data={found.name} reads it ({', '.join(f'{k}={v}' for k, v in found.arguments.items())})"]
    lines += [f"  note: {note}" for note in found.notes]
    lines += [f"  {split}: {count} images" for split, count in found.images.items()]
    for (height, width), count in found.sizes.most_common(5):
        aspect = Fraction(width, height).limit_denominator(20)
        lines.append(f"  size {width}x{height} (aspect {aspect.numerator}:{aspect.denominator}): {count} images")
    total = sum(found.pixels.values()) or 1
    colours = found.arguments.get("colors")
    for label, pixels in sorted(found.pixels.items()):
        name = found.class_names[label] if found.class_names and 0 <= label < len(found.class_names) else None
        colour = f" colour {tuple(colours[label])}" if colours and 0 <= label < len(colours) else ""
        lines.append(f"  label {label}{f' ({name})' if name else ''}{colour}: {100 * pixels / total:.2f} % of the pixels")
    mapping = label_map(found) if found.pixels else None
    if mapping:
        why = "a binary mask: 255 is the object, not void" if mapping == {0: 0, VOID: 1} else "grey levels: each a class, in order"
        lines.append(f"  labels {', '.join(map(str, mapping))} are not class ids ({why}): read through "
                     f"data.source.label_map, classes {', '.join(map(str, mapping.values()))}")
        if void_label(found) is not None and VOID not in mapping:
            lines.append(f"  label {VOID} stays void (data.ignore_index); if it is a class, add {VOID}:{len(mapping)} to the "
                         f"label_map and 1 to data.num_classes")
    if found.images and found.sizes:
        (size, held, fits), limit = decoded(found), f"{MEMORY_CACHE_LIMIT / 2**30:g} GiB"
        how = (f"under {limit}, so data.cache=memory keeps them" if fits else
               f"past {limit}, so they stream from disk each epoch (data.cache=PREFIX keeps them in files)")
        lines.append(f"  decoded at {size[0]}x{size[1]} the {sum(found.images.values())} images take {held / 2**20:,.0f} MiB: {how}")
    lines += [f"  problem: {problem}" for problem in dict.fromkeys(found.problems)] or ["  problems: none"]
    return lines


def write_option(file: Path, found: Found, values: dict) -> None:
    """A data option for --config-dir: the generic option's settings with these over them."""
    option = {"defaults": [found.name, "_self_"], "name": file.stem,
              **{key: values[key] for key in ("num_classes", "class_names", "ignore_index")}}
    image = [p for p in overrides(found, values) if p.startswith(("data.image_size=", "data.resize=", "data.cache="))]
    option.update({p.split("=", 1)[0].removeprefix("data."): yaml.safe_load(p.split("=", 1)[1]) for p in image})
    option["source"] = values["source"]
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(f"# written by python -m seglab.data inspect; train: python -m seglab --config-dir {file.parent.parent} "
                    f"data={file.stem}\n" + yaml.safe_dump(option, sort_keys=False))


def parse(argv: list[str]):
    parser = errors.argument_parser(prog="python -m seglab.data inspect", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the folder (or file) that holds the data set")
    parser.add_argument("settings", nargs="*", metavar="data.source.KEY=VALUE",
                        help="what inspect cannot guess, e.g. data.source.mask_dir=SegmentationClass/element")
    parser.add_argument("--write", default=None, help="also write the settings as a data option, e.g. my_conf/data/mine.yaml")
    parser.add_argument("--verbose", action="store_true", help="keep the libraries' notices")
    args = parser.parse_args(argv)
    if args.write and (Path(args.write).suffix != ".yaml" or Path(args.write).parent.name != "data"):
        raise errors.UserError(f"--write {args.write}: give CONFIG_DIR/data/NAME.yaml, the place --config-dir reads a data option from.")
    return args


def main(argv: list[str]) -> Found:
    args = parse(argv)
    console.quiet(args.verbose)
    path = Path(args.path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist: give the folder that holds your images and masks.")
    found = scan(path, args.settings)
    print("\n".join(report(path, found)))
    if found.refused or not found.images:
        raise DataError(f"{path}: data={found.name} cannot read it: {found.refused or 'no images'}")
    values = settings(found)
    if args.write:
        write_option(Path(args.write), found, values)
        print(f"wrote {args.write}; train on it with:")
        print(f"python -m seglab --config-dir {Path(args.write).parent.parent} data={Path(args.write).stem}")
    else:
        command = command_line(overrides(found, values))
        print("train on it with:")
        print(command)
    return found

"""`data=folder`: images and masks in folders, matched by file stem, read from `data.source.path`.

Where the splits come from, the first that PATH holds:

- split folders: `train/ val/ test/` with the masks in a sibling folder (`trainannot/`, CamVid's layout, or
  `train_labels/`, `train_masks/`, ...), `images/train/` + `masks/train/`, or `train/images/` + `train/masks/`;
- list files (`train.txt`, `val.txt`, `test.txt` in PATH, `lists/`, `splits/` or `ImageSets/Segmentation/`, or the
  files `lists` names, e.g. {train: annotations/trainval.txt}): one name per line (looked up in `images/` + `masks/`,
  or `image_dir` / `mask_dir`, which may lie deeper, e.g. annotations/trimaps) or an `image mask` pair of paths;
  with `list_format: name` the first word of a line is the name and the rest is ignored (Oxford-IIIT Pet's
  `Abyssinian_100 1 1 1`); `#` comment lines, a UTF-8 BOM and Windows line ends are fine;
- one pair of folders (`images/` + `masks/`, or `image_dir` / `mask_dir`), split with `seed`: the last
  `val_fraction` of a seeded shuffle is validation, the `test_fraction` before it test.
A layout without a validation split gets one the same way from its training split.

Masks: 8-bit index PNGs (mode L, or P: a palette PNG's indices are the labels, read with PIL), 16-bit label PNGs,
or RGB colours through a colour table (`colors`, one [r, g, b] per class, or a `classes.csv|json|yaml` in PATH with
a name and a colour per class).  `label_map` remaps ids ({dataset id: training id}, the ids it does not name become
`ignore_index`; with `ignore_index: null` a mask holding an id it does not name stops the run, naming the file).
Every file's header is read once before anything trains (sizes, modes, undecodable files); the
pixels stream from disk in the tf.data graph: TensorFlow decodes PNG, JPEG and BMP, PIL (in a py_function) the
palette masks and TIFF.
"""

# Lazy imports: this module is imported while the config is checked (seglab/config/sources.py), before TensorFlow loads.

from __future__ import annotations

import csv
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from seglab.config.check import require
from seglab.data import LABEL_ERROR_MARKER, DataError, Provenance, Splits, check_labels, share
from seglab.util.images import ends_like_jpeg

log = logging.getLogger(__name__)


class NoFolders(DataError):
    """PATH holds none of the layouts of folders this source reads (not a fault of one it found)."""


class NoColourTable(DataError):
    """Colour masks, and no table of the classes' colours (inspect then reads them through the colours found)."""


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # compared lower-cased: .JPG counts
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif")
SPLITS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
IMAGE_DIRS = ("images", "image", "imgs", "img", "jpegimages", "rgb")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "annotation", "annot", "segmentationclass", "gt")
SIBLING_SUFFIXES = ("annot", "_annot", "_labels", "labels", "_label", "_masks", "masks", "_mask", "_gt")
LIST_DIRS = (".", "lists", "splits", "imagesets/segmentation")
CLASS_FILES = ("classes.csv", "classes.json", "classes.yaml", "classes.yml", "class_dict.csv")
ON_UNREADABLE = ("skip", "fail")
LIST_FORMATS = ("auto", "name")  # auto: a name, or `image mask` paths | name: the first word is the name, the rest ignored
HEADER_WORDS = ("name", "names", "class", "class_name", "label")  # the first cell of a classes.csv header row
MAX_NAMED = 3  # file names quoted in an error message
UNMAPPED = -1  # an id label_map does not name, with ignore_index null: the pipeline stops on it
SCAN_THREADS = 8  # header reads are I/O-bound
TF_FORMATS = ("PNG", "JPEG", "BMP", "GIF")  # what tf.io.decode_image reads; the rest goes through PIL
INDEX_MODES = ("L", "LA")  # 8-bit grey PNGs: TensorFlow's decode_png gives the values as they are
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit label PNGs
COLOUR_MODES = ("RGB", "RGBA")


Pair = tuple[Path, Path, str]  # image, mask, the example's name (the image's path inside its folder)


def build(
    path: str | None = None,
    image_dir: str | None = None,
    mask_dir: str | None = None,
    mask_suffix: str = "",
    lists: dict | None = None,
    list_format: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    colors: list | None = None,
    label_map: dict | None = None,
    on_unreadable: str = "skip",
    num_classes: int = 2,
    ignore_index: int | None = 255,
    deterministic: bool = True,
    unmapped_error: str | None = None,
) -> Splits:
    """The `data=folder` source: train, val (and test when the data has one) of `(uint8 RGB image, int32 labels)`.
    `unmapped_error`: a preset's own line for a mask id that `label_map` does not name with `ignore_index` null (not
    a YAML key; data=pets: not a trimap), instead of the line that says to add it to data.source.label_map."""
    root = Path(path or "").expanduser()
    if not root.is_dir():
        raise DataError(f"data.source.path={path}: not a directory: give the folder that holds the images and masks.")
    how, found = locate(root, image_dir, mask_dir, mask_suffix, lists, list_format)
    splits = with_validation(found, val_fraction, test_fraction, seed)
    table = colour_table(root, colors)
    for name, pairs in splits.items():
        if not pairs:
            raise DataError(f"data.source.path={root}: the {name} split ({how}) holds no image/mask pairs: add images "
                            f"to it, or lower data.source.val_fraction / test_fraction if it was split off.")
    kept, reading = scan(root, splits, on_unreadable, table)
    if reading.mask not in ("colour", "colour_pil") and colors is not None:  # a classes file's colours only name classes
        raise DataError(f"data.source.colors gives RGB colours, but the masks hold grey labels (e.g. {kept['train'][0][1]}): "
                        f"their values are the classes; drop data.source.colors (data.source.label_map remaps values).")
    table = table if reading.mask in ("colour", "colour_pil") else None  # grey masks of labels: the table names them
    lut = label_table(label_map, ignore_index, reading.mask)
    datasets = {name: stream(pairs, reading, table, lut, ignore_index, deterministic, unmapped_error)
                for name, pairs in kept.items()}
    for name, dataset in datasets.items():
        check_labels(dataset, num_classes, ignore_index, f"data.source.path={root} ({name} split)")
    log.info("folder %s (%s): %s", root, how, ", ".join(f"{len(p)} {n}" for n, p in kept.items()))
    about = {name: Provenance({"kind": "folder", "path": str(root), "split": name, "layout": how, "seed": seed},
                              files=[str(f) for image, mask, _ in pairs for f in (image, mask)],
                              names=[n for _, _, n in pairs] if deterministic else None)
             for name, pairs in kept.items()}
    return Splits(train=datasets["train"], val=datasets["val"], test=datasets.get("test"), about=about)


def check(path=None, val_fraction=0.1, test_fraction=0.0, colors=None, label_map=None, on_unreadable="skip",
          lists=None, list_format="auto", **_) -> None:
    """Ranges of data.source.* (the types are checked from build's signature), before TensorFlow loads."""
    require(bool(path), "data.source.path", path, "give the folder with your images and masks: data.source.path=DIR")
    require(0.0 <= val_fraction < 1.0, "data.source.val_fraction", val_fraction, "use a fraction in [0, 1), e.g. 0.1")
    require(0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0, "data.source.test_fraction", test_fraction,
            f"use a fraction in [0, 1) that leaves training images beside val_fraction={val_fraction}")
    require(on_unreadable in ON_UNREADABLE, "data.source.on_unreadable", on_unreadable, "use skip or fail")
    require(list_format in LIST_FORMATS, "data.source.list_format", list_format,
            "use auto (a name, or image and mask paths, per line) or name (the first word is the name)")
    if lists is not None:
        bad = {k: v for k, v in lists.items() if k not in SPLITS or not (isinstance(v, str) and v)}
        require(not bad, "data.source.lists", bad, "map train, val or test to a list file inside data.source.path, "
                "e.g. {train: annotations/trainval.txt, test: annotations/test.txt}")
    if colors is not None:
        bad = [c for c in colors if not (isinstance(c, (list, tuple)) and len(c) == 3
                                         and all(isinstance(v, int) and 0 <= v <= 255 for v in c))]
        require(not bad, "data.source.colors", bad[:MAX_NAMED], "give one [r, g, b] per class, each 0..255")
        twice = sorted({tuple(c) for c in colors if list(map(tuple, colors)).count(tuple(c)) > 1})
        require(not twice, "data.source.colors", [list(c) for c in twice], "give each class its own colour")
    if label_map is not None:
        bad = {k: v for k, v in label_map.items() if not (isinstance(k, int) and isinstance(v, int) and k >= 0 and v >= 0)}
        require(not bad, "data.source.label_map", bad, "map dataset ids to training ids, both integers >= 0")


def find(path: Path) -> dict | None:
    """The data.source.* arguments that read PATH as folders of images and masks, or None if it holds none."""
    root = Path(path)
    if not root.is_dir():
        return None
    # As they are; list files whose lines carry more than a name (`Abyssinian_100 1 1 1`); masks named <stem><suffix>.
    refusal = None
    for extra in ({}, {"list_format": "name"}, {"mask_suffix": _mask_suffix(root)}):
        if extra.get("mask_suffix") == "":
            continue
        try:
            _, found = locate(root, None, None, extra.get("mask_suffix", ""), None, extra.get("list_format", "auto"))
        except NoFolders:
            continue
        except DataError as err:  # a layout of folders, with a fault
            refusal = refusal or err
            continue
        return {"path": str(root), **extra} if any(found.values()) else None
    sets = label_sets(root)  # images/ + SegmentationClass/<set>/: one label set read, the others named by `notes`
    if sets:
        return {"path": str(root), "image_dir": _folder_pair(root)[0].name, "mask_dir": sets[0].relative_to(root).as_posix()}
    if refusal is not None:  # folders of images and masks with a fault (duplicate stems, an unpaired image): say which
        raise refusal
    return None


def label_sets(root: Path) -> list[Path]:
    """The sub-folders of a mask folder that holds masks only in them (several label sets for the same images, e.g.
    SegmentationClass/element/ and SegmentationClass/defect/), in name order; [] where there is no such folder."""
    def stems(folder: Path, extensions) -> set[str]:
        return {p.stem for p in _files(folder) if p.suffix.lower() in extensions}

    pair = _folder_pair(root)
    if pair is None or stems(pair[1], MASK_EXTENSIONS):
        return []
    images = stems(pair[0], IMAGE_EXTENSIONS)
    return sorted(sub for sub in _subfolders(pair[1]).values() if images & stems(sub, MASK_EXTENSIONS))


def notes(path: str | None = None, mask_dir: str | None = None, **_) -> list[str]:
    """What inspect says beside its report: which label set it read where the masks hold several."""
    root = Path(path or "")
    sets = [s.relative_to(root).as_posix() for s in label_sets(root)] if mask_dir else []
    if len(sets) < 2 or mask_dir not in sets:
        return []
    others = " or ".join(f"data.source.mask_dir={s}" for s in sets if s != mask_dir)
    return [f"{Path(mask_dir).parent.as_posix()}/ holds {len(sets)} label sets ({', '.join(Path(s).name for s in sets)}): this "
            f"reads {mask_dir}; for another, inspect again with {others}"]


# --- where the pairs are ----------------------------------------------------------------------


def locate(root: Path, image_dir: str | None, mask_dir: str | None, mask_suffix: str, lists: dict | None = None,
           list_format: str = "auto") -> tuple[str, dict[str, list[Pair]]]:
    """(how the splits were found, split -> pairs); a DataError when PATH holds no layout this module reads."""
    if image_dir or mask_dir or lists:
        images, masks = root / (image_dir or "images"), root / (mask_dir or "masks")
        for folder, key in ((images, "image_dir"), (masks, "mask_dir")):
            if not folder.is_dir():
                raise DataError(f"data.source.{key}: {folder} is not a directory: name a folder inside data.source.path.")
        if lists:
            return "list files", named_lists(root, lists, images, masks, mask_suffix, list_format)
        found = _list_files(root)
        if found:
            return "list files", {s: read_list(f, root, images, masks, mask_suffix, list_format) for s, f in found.items()}
        return f"one pair of folders, {images.name}/ + {masks.name}/", {"pool": pair(images, masks, mask_suffix)}
    folders = _split_folders(root)
    if "train" in folders:
        return ("split folders", {s: pair(i, m, mask_suffix) for s, (i, m) in folders.items()})
    found, both = _list_files(root), _folder_pair(root)
    if found:
        images, masks = both or (root, root)
        return "list files", {s: read_list(f, root, images, masks, mask_suffix, list_format) for s, f in found.items()}
    if both:
        return f"one pair of folders, {both[0].name}/ + {both[1].name}/", {"pool": pair(*both, mask_suffix)}
    raise NoFolders(
        f"data.source.path={root}: found no images and masks: use train/ + trainannot/ (or masks/train/, or "
        f"train/images/ + train/masks/), list files train.txt / val.txt, or images/ + masks/ (docs/own-data.md)."
    )


def named_lists(root: Path, lists: dict, images: Path, masks: Path, mask_suffix: str, list_format: str) -> dict[str, list[Pair]]:
    """split -> the pairs of each list file `lists` names (relative to PATH).  A named file that is absent is left
    out with a warning, an empty val or test list without one (no such split); without a train list, the pairs of
    images + masks that no other list names are train."""
    present = {split: root / name for split, name in lists.items() if (root / name).is_file()}
    for split in sorted(lists.keys() - present.keys()):
        log.warning("data.source.lists.%s: %s is not a file: reading without it", split, root / lists[split])
    found = {split: read_list(file, root, images, masks, mask_suffix, list_format) for split, file in present.items()}
    found = {split: pairs for split, pairs in found.items() if pairs or split == "train"}
    if "train" not in found:
        listed = {image for pairs in found.values() for image, _, _ in pairs}
        found["train"] = [p for p in pair(images, masks, mask_suffix) if p[0] not in listed]
    return found


def _subfolders(folder: Path) -> dict[str, Path]:
    """Lower-cased name -> sub-folder."""
    try:
        return {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    except OSError:
        return {}


def _first(folders: dict[str, Path], names) -> Path | None:
    return next((folders[n] for n in names if n in folders), None)


def _split_folders(root: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (image folder, mask folder) for each split the three split-folder layouts give."""
    top = _subfolders(root)
    images, masks = _first(top, IMAGE_DIRS), _first(top, MASK_DIRS)
    found = {}
    for split, aliases in SPLITS.items():
        for alias in aliases:
            inner = _subfolders(top[alias]) if alias in top else {}
            if _first(inner, IMAGE_DIRS) and _first(inner, MASK_DIRS):  # train/images + train/masks
                found[split] = (_first(inner, IMAGE_DIRS), _first(inner, MASK_DIRS))
            elif images and masks and alias in _subfolders(images) and alias in _subfolders(masks):  # images/train
                found[split] = (_subfolders(images)[alias], _subfolders(masks)[alias])
            elif alias in top and _first(top, [alias + s for s in SIBLING_SUFFIXES]):  # train + trainannot
                found[split] = (top[alias], _first(top, [alias + s for s in SIBLING_SUFFIXES]))
            if split in found:
                break
    return found


def _folder_pair(root: Path) -> tuple[Path, Path] | None:
    top = _subfolders(root)
    images, masks = _first(top, IMAGE_DIRS), _first(top, MASK_DIRS)
    return (images, masks) if images and masks else None


def _list_files(root: Path) -> dict[str, Path]:
    """split -> its list file, from the first folder of LIST_DIRS that has a train list (folder names in any case:
    PASCAL VOC's ImageSets/Segmentation)."""
    for where in LIST_DIRS:
        folder = root
        for part in where.split("/") if where != "." else []:
            folder = _subfolders(folder).get(part) if folder is not None else None
        if folder is None:
            continue
        files = {p.name.lower(): p for p in _files(folder) if p.suffix.lower() == ".txt"}
        lists = {split: files[a + ".txt"] for split, aliases in SPLITS.items() for a in aliases if a + ".txt" in files}
        if "train" in lists:
            return lists
    return {}


def _files(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file()]
    except OSError:
        return []


def index(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """Stem inside `folder` ('sub/name') -> file, recursively; one line for a symlink loop, a name that is not UTF-8
    or two files with the same stem."""
    found, seen = {}, {os.path.realpath(folder)}
    for top, dirs, files in os.walk(folder, followlinks=True):
        for name in dirs:
            _check_name(top, name, "folder")  # before TensorFlow meets a path under it
            real = os.path.realpath(os.path.join(top, name))
            if real in seen or os.path.realpath(top).startswith(real + os.sep):
                raise DataError(f"{os.path.join(top, name)} is a symlink loop (it points back to {real}): remove the link.")
            seen.add(real)
        for name in sorted(files):
            _check_name(top, name)
            file = Path(top) / name
            if name.startswith(".") or file.suffix.lower() not in extensions:
                continue
            if file.is_symlink() and not file.exists():
                raise DataError(f"{file} is a broken link or a symlink loop: point it at a file or remove it.")
            key = file.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise DataError(f"{found[key]} and {file} have the same stem {key!r}: images and masks are matched by "
                                f"stem, so keep one of them (or move one to another folder).")
            found[key] = file
    return found


def _check_name(top: str, name: str, kind: str = "file") -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise DataError(f"{top}/{shown}: the {kind} name is not UTF-8: rename it (e.g. convmv -f latin1 -t utf8).") from None


def pair(images: Path, masks: Path, mask_suffix: str = "") -> list[Pair]:
    """The images of one folder with the masks of another, by stem; one line naming the unpaired files."""
    image_files, mask_files = index(images, IMAGE_EXTENSIONS), index(masks, MASK_EXTENSIONS)
    mask_of = {key[: len(key) - len(mask_suffix)] if mask_suffix else key: f for key, f in mask_files.items()
               if key.endswith(mask_suffix)}
    lonely_images = sorted(set(image_files) - set(mask_of))
    lonely_masks = sorted(set(mask_of) - set(image_files))
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} images in {images} have no mask in {masks} (e.g. "
                         f"{', '.join(image_files[k].name for k in lonely_images[:MAX_NAMED])})")
        if lonely_masks:
            parts.append(f"{len(lonely_masks)} masks in {masks} have no image in {images} (e.g. "
                         f"{', '.join(mask_of[k].name for k in lonely_masks[:MAX_NAMED])})")
        fix = " (masks named <image stem><suffix>? set data.source.mask_suffix)" if not mask_suffix else ""
        raise DataError(f"{' and '.join(parts)}: give every image a mask with the same stem, or remove the extra files{fix}.")
    return [(image_files[k], mask_of[k], image_files[k].relative_to(images).as_posix()) for k in sorted(image_files)]


def _mask_suffix(root: Path) -> str:
    """The suffix of the mask stems (e.g. '_L' for CamVid's 0001TP_006690_L.png) when the first image's stem begins one."""
    both = _folder_pair(root) or next(iter(_split_folders(root).values()), None)
    if both is None:
        return ""
    images = sorted(p.stem for p in _files(both[0]) if p.suffix.lower() in IMAGE_EXTENSIONS)
    masks = sorted(p.stem for p in _files(both[1]) if p.suffix.lower() in MASK_EXTENSIONS)
    if not images:
        return ""
    longer = [m[len(images[0]):] for m in masks if m.startswith(images[0]) and m != images[0]]
    return longer[0] if len(longer) == 1 else ""


def read_list(file: Path, root: Path, images: Path, masks: Path, mask_suffix: str, list_format: str = "auto") -> list[Pair]:
    """The pairs of a list file: one name per line (looked up in `images` and `masks`) or `image mask` paths; with
    list_format=name the first word of each line is the name and the rest is ignored."""
    text = file.read_bytes().decode("utf-8-sig", errors="replace")  # utf-8-sig drops a BOM; splitlines drops \r
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    image_files = mask_files = None
    pairs, missing = [], []
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) >= 2 and list_format == "auto":
            image, mask = (_resolve(p, file.parent, root) for p in parts[:2])
            if image is None or mask is None:
                missing.append(f"line {number}: {line}")
                continue
            pairs.append((image, mask, image.relative_to(root).as_posix() if image.is_relative_to(root) else image.name))
            continue
        if image_files is None:
            image_files, mask_files = index(images, IMAGE_EXTENSIONS), index(masks, MASK_EXTENSIONS)
        key = Path(parts[0].replace("\\", "/")).with_suffix("").as_posix() if Path(parts[0]).suffix.lower() in IMAGE_EXTENSIONS + MASK_EXTENSIONS else parts[0]
        if key not in image_files or key + mask_suffix not in mask_files:
            missing.append(f"line {number}: {line}")
            continue
        pairs.append((image_files[key], mask_files[key + mask_suffix], image_files[key].relative_to(images).as_posix()))
    if missing:
        columns = list_format == "auto" and any(len(m.split(": ", 1)[1].split()) >= 2 for m in missing)
        hint = " (a name followed by other columns? set data.source.list_format=name)" if columns else ""
        line_is = ("begins with a name" if list_format == "name" else "is a name") + f" found in both {images} and {masks}"
        raise DataError(f"{file}: {len(missing)} lines name no matching pair of image and mask ({'; '.join(missing[:MAX_NAMED])}): "
                        f"a line {line_is}" + ("" if list_format == "name" else f", or two paths (image mask) relative to {root}")
                        + f"{hint}.")
    return pairs


def _resolve(written: str, beside: Path, root: Path) -> Path | None:
    """A path from a list file: relative to the list, to PATH, or absolute; an absolute path from another machine
    (SegNet's /SegNet/CamVid/train/x.png) is tried under PATH with its leading folders dropped one at a time."""
    parts = Path(written.replace("\\", "/")).parts
    candidates = [Path(written), beside / written, root / written]
    candidates += [root.joinpath(*parts[i:]) for i in range(1, len(parts))]
    return next((c for c in candidates if c.is_file()), None)


def with_validation(found: dict[str, list[Pair]], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Pair]]:
    """train/val(/test): one pool split three ways, or a validation split cut from training when there is none."""
    if "val" not in found and not val_fraction:  # a training needs a validation split: it picks the best epoch
        raise DataError("data.source.val_fraction=0, and the data set has no validation split of its own (a val "
                        "folder or list): cut one with a fraction, e.g. data.source.val_fraction=0.1")
    if "pool" in found:
        return seeded(found["pool"], val_fraction, test_fraction, seed)
    if "train" not in found:
        raise DataError(f"found the splits {', '.join(found)} but no train split: name a folder or list train.")
    splits = dict(found)
    if "val" not in splits:
        cut = seeded(found["train"], val_fraction, 0.0, seed)
        splits["train"], splits["val"] = cut["train"], cut["val"]
    return {name: splits[name] for name in ("train", "val", "test") if name in splits}


def seeded(pairs: list[Pair], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Pair]]:
    """The pairs in name order (by stem, whatever order a list file gives them in) shuffled with `seed`: the last
    val_fraction is val, the test_fraction before it test, each share as seglab.data.share rounds it."""
    by_name = sorted(pairs, key=lambda p: Path(p[2]).with_suffix("").as_posix())
    order = [by_name[i] for i in np.random.default_rng(seed).permutation(len(by_name))]
    n_val = share(len(order), val_fraction) if val_fraction > 0 else 0
    n_test = share(len(order), test_fraction) if test_fraction > 0 else 0
    cut = len(order) - n_val - n_test
    splits = {"train": order[:cut], "val": order[len(order) - n_val:]}
    if n_test:
        splits["test"] = order[cut: len(order) - n_val]
    return splits


# --- what the masks hold ----------------------------------------------------------------------


def class_file(root: Path) -> tuple[list[str], list[list[int]] | None] | None:
    """(class names, colours or None) from a classes.csv|json|yaml in PATH, or None if there is none."""
    file = next((root / n for n in CLASS_FILES if (root / n).is_file()), None)
    if file is None:
        return None
    try:
        text = file.read_bytes().decode("utf-8-sig")
        if file.suffix == ".csv":
            rows = [r for r in csv.reader(io.StringIO(text)) if r and r[0].strip()]
            if rows and (rows[0][0].strip().lower() in HEADER_WORDS or not all(v.strip().isdigit() for v in rows[0][1:])):
                rows = rows[1:]
            entries = [(r[0].strip(), [int(v) for v in r[1:4]] if len(r) >= 4 else None) for r in rows]
        else:
            loaded = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
            items = loaded.items() if isinstance(loaded, dict) else ((e["name"], e.get("color", e.get("colour"))) if isinstance(e, dict) else (e, None) for e in loaded)
            entries = [(str(name), list(map(int, colour)) if colour is not None else None) for name, colour in items]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{file} cannot be read as a classes file ({err}): one class per row, name,r,g,b "
                        f"(or a JSON/YAML list of {{name: ..., color: [r, g, b]}}).") from None
    names = [name for name, _ in entries]
    colours = [colour for _, colour in entries]
    return names, (colours if all(c is not None for c in colours) else None)


def colour_table(root: Path, colors: list | None) -> list[tuple[int, int, int]] | None:
    """The colour of each class: data.source.colors, else the classes file's, else None."""
    if colors is not None:
        return [tuple(int(v) for v in c) for c in colors]
    found = class_file(root)
    return [tuple(c) for c in found[1]] if found and found[1] else None


@dataclass
class Reading:
    """How the files are decoded: `image` tf|pil, `mask` index (8-bit PNG) | wide (16-bit PNG) | colour | pil."""

    image: str
    mask: str


def scan(root: Path, splits: dict[str, list[Pair]], on_unreadable: str, table) -> tuple[dict[str, list[Pair]], Reading]:
    """Every file's header: the pairs kept (undecodable ones skipped, or a DataError with on_unreadable=fail),
    one line for sizes that differ, and how to decode them."""
    everything = [p for pairs in splits.values() for p in pairs]
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        headers = dict(zip(everything, pool.map(lambda p: (header(p[0]), header(p[1])), everything)))
    broken = {p: next(h for h in headers[p] if isinstance(h, str)) for p in everything if any(isinstance(h, str) for h in headers[p])}
    if broken and on_unreadable == "fail":
        raise DataError(f"{len(broken)} image/mask pairs cannot be decoded: {'; '.join(list(broken.values())[:MAX_NAMED])}: "
                        f"replace or remove them, or set data.source.on_unreadable=skip to leave them out.")
    if broken:
        log.warning("skipped %d of %d image/mask pairs that cannot be decoded (data.source.on_unreadable=fail refuses "
                    "them), e.g. %s", len(broken), len(everything), "; ".join(list(broken.values())[:MAX_NAMED]))
    good = [p for p in everything if p not in broken]
    differ = [p for p in good if headers[p][0][:2] != headers[p][1][:2]]
    if differ:
        named = ", ".join(f"{m} ({headers[(i, m, n)][1][0]}x{headers[(i, m, n)][1][1]}, its image {i.name} "
                          f"{headers[(i, m, n)][0][0]}x{headers[(i, m, n)][0][1]})" for i, m, n in differ[:MAX_NAMED])
        raise DataError(f"{len(differ)} masks differ in size from their images: {named}: give each mask its image's size.")
    kept = {name: [p for p in pairs if p not in broken] for name, pairs in splits.items()}
    for name, pairs in kept.items():
        if not pairs:
            raise DataError(f"data.source.path={root}: none of the {name} split's images can be decoded, e.g. "
                            f"{next(iter(broken.values()))}: replace the files.")
    return kept, reading_for([headers[p] for p in good], table, root)


def header(path: Path) -> tuple[int, int, str, str] | str:
    """(width, height, mode, format) from the file's header, or why it cannot be decoded."""
    try:
        with Image.open(path) as image:
            found = (*image.size, image.mode, image.format)
            if image.format == "JPEG" and not ends_like_jpeg(path):
                image.load()  # a JPEG cut short; one with trailing bytes after its end marker loads
            elif image.format == "PNG":
                image.verify()  # every chunk's checksum, without inflating: catches a truncated file
            return found
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        return f"{path} ({err})"



def reading_for(headers: list, table, root: Path) -> Reading:
    """The fastest decoder that reads every file as it is."""
    images = {fmt for (_, _, _, fmt), _ in headers}
    masks = {(mode, fmt) for _, (_, _, mode, fmt) in headers}
    image = "tf" if images <= set(TF_FORMATS) else "pil"
    colour = any(mode in COLOUR_MODES for mode, _ in masks)
    if colour and table is None:
        first = next(mode for mode, _ in masks if mode in COLOUR_MODES)
        raise NoColourTable(f"data.source.path={root}: the masks are {first} colours, not labels: give the colour of each "
                        f"class, data.source.colors=[[r,g,b],...] or a classes.csv in {root} (name,r,g,b per row); "
                        f"`python -m seglab.data inspect {root}` lists the colours found.")
    # Grey masks (8 or 16 bits) hold labels: a table of colours then only names the classes (a class_dict.csv beside
    # index masks); one of greys ([[0,0,0],[255,255,255]]) maps their values.  P masks' palettes are colours.
    grey_masks = all(mode in INDEX_MODES + WIDE_MODES for mode, _ in masks)
    if table is not None and not (grey_masks and any(len(set(c)) > 1 for c in table)):
        mask = "colour"  # P and grey masks too: PIL turns them into the colours the table names
    elif all(mode in INDEX_MODES and fmt == "PNG" for mode, fmt in masks):
        mask = "index"
    elif all(mode in WIDE_MODES and fmt == "PNG" for mode, fmt in masks):
        mask = "wide"
    else:
        mask = "pil"
    if mask == "colour" and not {fmt for _, fmt in masks} <= set(TF_FORMATS):
        mask = "colour_pil"
    return Reading(image, mask)


def label_table(label_map: dict | None, ignore_index: int | None, mask: str) -> np.ndarray | None:
    """dataset id -> training id for every id the masks can hold (ids the map does not name: ignore_index, or
    UNMAPPED when it is null)."""
    if label_map is None:
        return None
    size = max(256 if mask in ("index", "colour", "colour_pil") else 65536, max(label_map) + 1)
    table = np.full(size, UNMAPPED if ignore_index is None else ignore_index, np.int32)
    for source, target in label_map.items():
        table[int(source)] = int(target)
    return table


# --- the stream -------------------------------------------------------------------------------


def stream(pairs: list[Pair], reading: Reading, table, lut, ignore_index: int | None, deterministic: bool,
           unmapped_error: str | None = None):
    """(uint8 RGB image, int32 labels) per pair, decoded in the tf.data graph in parallel, in the pairs' order."""
    import tensorflow as tf  # only a built pipeline needs it (see the note at the top)

    colours = _colour_lookup(tf, table) if table is not None else None
    lut_tensor = tf.constant(lut) if lut is not None else None
    unmapped_message = unmapped_error or (_unmapped_message(lut) if lut is not None else "")

    def decode(image_path, mask_path):
        image = _read_image(tf, image_path, reading.image)
        mask = _read_mask(tf, mask_path, reading.mask)
        if colours is not None:
            mask = _colours_to_labels(tf, mask, colours, mask_path)
        if lut_tensor is not None:
            inside = (mask >= 0) & (mask < lut_tensor.shape[0])
            mask = tf.where(inside, tf.gather(lut_tensor, tf.clip_by_value(mask, 0, lut_tensor.shape[0] - 1)),
                            UNMAPPED if ignore_index is None else ignore_index)
            if ignore_index is None:
                mask = _all_mapped(tf, mask, mask_path, unmapped_message)
        return image, mask

    files = tf.data.Dataset.from_tensor_slices(([str(i) for i, _, _ in pairs], [str(m) for _, m, _ in pairs]))
    return files.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _unmapped_message(lut: np.ndarray) -> str:
    ids = np.flatnonzero(lut != UNMAPPED).tolist()
    contiguous = bool(ids) and ids == list(range(ids[0], ids[-1] + 1))
    named = f"{ids[0]}..{ids[-1]}" if contiguous else "{" + ", ".join(map(str, ids)) + "}"
    return (f"{LABEL_ERROR_MARKER} a mask holds a value outside {named}, the ids data.source.label_map names, and "
            f"data.ignore_index=null leaves no label for it: add the id to label_map, or set data.ignore_index (e.g. 255) "
            f"for the ids it does not name")


def _all_mapped(tf, labels, path, message: str):
    """The labels, once none is UNMAPPED: else the pipeline stops with `message` and the mask's file."""
    with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(labels != UNMAPPED), [message, "file:", path])]):
        return tf.identity(labels)


def _read_image(tf, path, how: str):
    if how == "tf":
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    else:
        image = tf.numpy_function(lambda p: np.asarray(Image.open(p.decode()).convert("RGB")), [path], tf.uint8)
    image.set_shape([None, None, 3])
    return image


def _read_mask(tf, path, how: str):
    """int32 labels (H, W), or int32 colours (H, W, 3) for the colour table."""
    if how == "index":
        mask = tf.io.decode_png(tf.io.read_file(path), channels=1)[..., 0]
    elif how == "wide":
        mask = tf.io.decode_png(tf.io.read_file(path), channels=1, dtype=tf.uint16)[..., 0]
    elif how == "colour":  # TensorFlow expands a palette to its colours, grey to three equal channels
        mask = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        mask.set_shape([None, None, 3])
    elif how == "colour_pil":
        mask = tf.numpy_function(lambda p: np.asarray(Image.open(p.decode()).convert("RGB")), [path], tf.uint8)
        mask.set_shape([None, None, 3])
    else:  # a palette PNG's indices as they are (not its colours), TIFF, 32-bit labels
        mask = tf.numpy_function(lambda p: np.asarray(Image.open(p.decode()), np.int32), [path], tf.int32)
        mask.set_shape([None, None])
    return tf.cast(mask, tf.int32)


def _colour_lookup(tf, table):
    keys = tf.constant([(r << 16) | (g << 8) | b for r, g, b in table], tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(table), dtype=tf.int32)), -1)


def _colours_to_labels(tf, rgb, colours, path):
    """(H, W, 3) colours -> class labels; a colour outside the table stops with one line naming it, the file and the count."""
    keys = tf.cast(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2], tf.int64)
    labels = colours.lookup(keys)
    unknown = labels < 0
    first = tf.reduce_max(tf.where(unknown, keys, -1))
    message = tf.strings.join([
        LABEL_ERROR_MARKER, " ", path, " has ", tf.strings.as_string(tf.reduce_sum(tf.cast(unknown, tf.int32))),
        " pixels of colours not in the colour table, e.g. (", tf.strings.as_string(first // 65536), ", ",
        tf.strings.as_string(first // 256 % 256), ", ", tf.strings.as_string(first % 256),
        "): add it to data.source.colors or the classes file, as a class of its own or one that label_map sends to data.ignore_index",
    ])
    with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(tf.reduce_any(unknown)), [message])]):
        return tf.identity(labels)


# --- for `python -m seglab.data inspect` -------------------------------------------------------


def class_names(path: str | None = None, num_classes: int | None = None, **_) -> list[str] | None:
    """The class names of a classes.csv|json|yaml in PATH, or None: what inspect prints, and what a run takes where
    data.class_names is null (seglab.config.sources.fill_classes); a data.num_classes that differs is one line."""
    found = class_file(Path(path).expanduser()) if isinstance(path, (str, os.PathLike)) and str(path) else None
    if found is None:
        return None
    names = found[0]
    require(num_classes in (None, len(names)), "data.num_classes", num_classes,
            f"the classes file in data.source.path={path} names {len(names)} classes ({', '.join(map(str, names))}): "
            f"give data.num_classes={len(names)} or leave it null, or name yours with data.class_names=[...]")
    return names


def mask_colours(path: Path, image_dir: str | None = None, mask_dir: str | None = None, mask_suffix: str = "",
                 limit: int | None = None, **_) -> list[tuple[int, int, int]]:
    """The colours of the first `limit` masks (None: all) when they are RGB (none when they hold labels), in RGB
    order: a colour table for masks that come without one."""
    _, found = locate(Path(path), image_dir, mask_dir, mask_suffix)
    masks = [m for pairs in found.values() for _, m, _ in pairs][:limit]
    seen: set[tuple[int, int, int]] = set()
    for mask in masks:
        with Image.open(mask) as opened:
            if opened.mode not in COLOUR_MODES:
                return []
            rgb = np.asarray(opened.convert("RGB")).reshape(-1, 3)
        seen |= set(map(tuple, np.unique(rgb, axis=0).tolist()))
    return sorted(seen)

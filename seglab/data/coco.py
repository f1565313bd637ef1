"""COCO-format instance annotations (Lin et al., ECCV 2014) -> semantic masks, for any list of categories.

Each split (`train`, `val`, optionally `test`) is an instances JSON (`annotations`) and the folder of its
images (`images`), both relative to `path`; the defaults are COCO 2017's layout.  Without a `val` file, a
seeded `val_fraction` of the train file's images is the validation split.  The classes are background 0,
then `categories` in their order, looked up by name (null: every category of the train file, in the
file's order; a name listed twice in a file is one class).

A mask paints the image's non-crowd instances of those categories (polygons and RLE alike, pycocotools)
from the largest to the smallest, so where two instances overlap the SMALLER one wins (a cat on a sofa
stays a cat); of two with the same area, the later annotation in the file wins.  Crowd regions
(iscrowd=1) that no instance covers get `ignore_index` (with `ignore_index: null` they count as their
category).  `negative_fraction` keeps the images holding one of the categories plus that share of images
without any (picked with `seed`); null keeps every image of the file.

The conversion runs once per content and setting and writes sharded TFRecords (the JPEG or PNG bytes as
they are, the mask as an 8-bit PNG) under `cache_dir/<image folder>-<key>/`, the key a digest of the
annotation file's bytes, the image folder and every setting that changes the records.  The images are keyed
by their stamps (file name, size, mtime_ns: one `stat` each, never their bytes): the manifest records them,
each shard is named by a digest of its own images' stamps, and a later run that finds an image's stamp
changed (replaced in place) converts again the shards holding changed images, keeps the others, and removes
the superseded ones.  Each shard is written under a temporary name and renamed when complete, and a split's
manifest is written last, so an interrupted conversion leaves nothing a later run would trust; that run
converts the missing shards.  One run converts a folder at a time (flock); another waits for it, then reuses
its shards.  Reading is a parallel `TFRecordDataset` pipeline.
"""

# Lazy imports: this module is imported while the config is checked (seglab/config/sources.py calls `check`
# and `find` runs for `python -m seglab.data inspect`); TensorFlow loads only when the splits are built.

from __future__ import annotations

import fcntl
import hashlib
import inspect
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from tqdm import tqdm

from seglab import errors
from seglab.config.check import ConfigError, require
from seglab.data import DataError, Provenance, Splits, carve, check_labels, filecache
from seglab.util import atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the record layout or the mask rule changes: old caches are then ignored
DOWNLOAD = "https://cocodataset.org/#download (2017 Train/Val images and 2017 Train/Val annotations)"
TRAIN_2017 = {"annotations": "annotations/instances_train2017.json", "images": "train2017"}
VAL_2017 = {"annotations": "annotations/instances_val2017.json", "images": "val2017"}
ROLES = ("train", "val", "test")
BACKGROUND = "background"
KEPT_AS_IS = {"JPEG": ("L", "RGB"), "PNG": None}  # formats TensorFlow decodes as stored (None: any mode)
MAX_NAMED = 5
MAX_LABEL = 255  # masks are stored as 8-bit PNG
PAINTS_ITS_CLASSES = True  # no label past the categories: `inspect` reads it with its own data.num_classes
HEAD_BYTES = 64  # enough to see the JSON object open
TAIL_BYTES = 1 << 16  # COCO files end with their "categories"
CHUNK_BYTES = 1 << 20
STAMP_CHARS = 12  # hex digits of a shard's stamp digest in its name
LOCK = "convert.lock"  # in a conversion's folder: held by the run converting it
SHARD = re.compile(r".+-\d{5}-of-\d{5}(-[0-9a-f]+)?\.tfrecord")  # a complete shard (a temporary name has .tmp<pid>)


def build(
    path: str = "data/coco",
    categories: Optional[list] = None,
    train: dict = TRAIN_2017,
    val: Optional[dict] = VAL_2017,
    test: Optional[dict] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    cache_dir: str = "~/.cache/seglab/coco",
    negative_fraction: Optional[float] = None,
    shards: int = 8,
    seed: int = 0,
    ignore_index: Optional[int] = 255,
    num_classes: Optional[int] = None,
    class_names: Optional[list] = None,
    deterministic: bool = True,
) -> Splits:
    """The `data=coco` source: `(uint8 RGB image (H, W, 3), int32 labels (H, W))` at each file's own size."""
    if categories is not None:
        _refuse(_contradiction(num_classes, class_names, list(categories), f"data.source.categories={list(categories)}"))
    root = Path(path).expanduser()
    parts = plan(root, train, val, test, val_fraction, test_fraction)
    settings = dict(negative_fraction=negative_fraction, shards=shards, seed=seed, ignore_index=ignore_index)
    classes = list(categories) if categories is not None else None
    splits, about = {}, {}
    for role, part in parts.items():  # train first: with categories null, its file fixes the classes
        files, count, classes = convert(part, Path(cache_dir).expanduser(), classes=classes, **settings)
        if role == "train" and categories is None:
            _refuse(_contradiction(num_classes, class_names, classes, str(part.annotations)))
        splits[role] = read(files, count, deterministic)
        # Names for the splits per-image tables show, and only in a deterministic order.
        names = record_names(files) if role != "train" and deterministic else None
        about[role] = Provenance({"kind": "coco", "annotations": str(part.annotations), "images": str(part.images),
                                  "categories": classes, "val_fraction": part.carve, **part.test_share(), **settings},
                                 files=files, names=names)
    check_labels(splits["train"], len(classes) + 1, ignore_index, f"coco ({parts['train'].annotations})")
    return Splits(train=splits["train"], val=splits["val"], test=splits.get("test"), about=about)


def check(**arguments: Any) -> None:
    """The ranges of `data.source` (its keys and types are checked against `build`'s signature first)."""
    bound = inspect.signature(build).bind(**arguments)
    bound.apply_defaults()
    a = bound.arguments
    fraction = a["negative_fraction"]
    require(fraction is None or 0.0 <= fraction < 1.0, "data.source.negative_fraction", fraction,
            "use a fraction in [0, 1) (e.g. 0.2: a fifth of each split without any of the categories), or null for every image")
    require(a["shards"] >= 1, "data.source.shards", a["shards"], "use an integer >= 1")
    for role in ROLES:
        entry = a[role]
        require((entry is None and role != "train") or _is_split(entry), f"data.source.{role}", entry,
                "give {annotations: FILE.json, images: DIR}, relative to data.source.path" + ("" if role == "train" else ", or null"))
    if a["val"] is None:
        require(0.0 < a["val_fraction"] < 1.0, "data.source.val_fraction", a["val_fraction"],
                "use a fraction in (0, 1): with data.source.val null, that share of the train file's images is the validation split")
    if a["test"] is None:
        taken = a["val_fraction"] if a["val"] is None else 0.0
        require(0.0 <= a["test_fraction"] < 1.0 - taken, "data.source.test_fraction", a["test_fraction"],
                "use a fraction in [0, 1) (less than 1 with val_fraction): with data.source.test null, that share of the "
                "train file's images is the test split (0: none)")
    categories, num_classes, ignore = a["categories"], a["num_classes"], a["ignore_index"]
    if categories is not None:
        names = [str(name) for name in categories]
        require(bool(names) and all(names), "data.source.categories", categories,
                "name one category or more, e.g. [cat, dog], or null for every category of the file")
        repeated = sorted({name for name in names if names.count(name) > 1})
        require(not repeated, "data.source.categories", repeated, "name each category once")
        problem = _contradiction(num_classes, a["class_names"], names, f"data.source.categories={names}")
        if problem:
            raise ConfigError(problem)
    require(num_classes is None or num_classes <= MAX_LABEL + 1, "data.num_classes", num_classes,
            f"COCO masks are stored as 8-bit PNG: use at most {MAX_LABEL + 1} classes")
    lowest = num_classes if num_classes is not None else 2
    require(ignore is None or lowest <= ignore <= MAX_LABEL, "data.ignore_index", ignore,
            f"COCO masks are stored as 8-bit PNG: use null (crowd regions count as their category) or a label in "
            f"{lowest}..{MAX_LABEL} (e.g. 255)")


def class_names(**arguments: Any) -> Optional[list[str]]:
    """Background, then data.source.categories, or (null) the train file's categories in its order: the classes a
    run takes where data.class_names is null (seglab.config.sources.fill_classes), before TensorFlow loads.  The
    source's ranges first (`check`), then a data.num_classes that contradicts the classes, or a missing train file:
    one line each.  None for arguments of the wrong kind, which the schema's check names next."""
    try:
        bound = inspect.signature(build).bind(**arguments)
    except TypeError:  # a key build does not take
        return None
    bound.apply_defaults()
    path, categories, train, num_classes = (bound.arguments[key] for key in ("path", "categories", "train", "num_classes"))
    if not (isinstance(path, str) and (categories is None or isinstance(categories, list)) and _is_split(train)):
        return None
    check(**bound.arguments)  # given categories: their contradiction with data.num_classes is refused there
    if categories is not None:
        return [BACKGROUND, *(str(name) for name in categories)]
    annotations = plan(Path(path).expanduser(), train, None, None, 0.5)["train"].annotations
    names = file_categories(annotations)
    problem = _contradiction(num_classes, None, names, str(annotations))
    if problem:
        raise ConfigError(problem)
    return [BACKGROUND, *names]


def file_categories(annotations: Path) -> list[str]:
    """An instances file's category names in its order (each once, as `resolve` labels them), without parsing a
    450 MB file: COCO's own files end with their "categories", labelling tools' exports (CVAT) start with them;
    a file with them elsewhere is read whole."""
    with annotations.open("rb") as stream:
        stream.seek(max(0, annotations.stat().st_size - TAIL_BYTES))
        found = _categories_in(stream.read())
        if found is None:  # the first megabyte only where the end does not hold them
            stream.seek(0)
            found = _categories_in(stream.read(CHUNK_BYTES))
    if found is None:
        try:
            found = json.loads(annotations.read_bytes()).get("categories", [])
        except json.JSONDecodeError as err:
            raise DataError(_not_json(annotations, err)) from None
        except (AttributeError, UnicodeDecodeError) as err:
            raise DataError(f"{annotations} is not a COCO instances file ({type(err).__name__}: {err}); {_again()}.") from None
    names = list(dict.fromkeys(str(category.get("name")) for category in found if isinstance(category, dict)))
    if not names:
        raise DataError(_no_categories(str(annotations)))
    return names


def _categories_in(text: bytes) -> Optional[list]:
    """The first `"categories": [...]` list of objects with a name that parses whole in TEXT, or None."""
    decoded = text.decode("utf-8", errors="replace")
    for match in re.finditer(r'"categories"\s*:\s*', decoded):
        try:
            value, _ = json.JSONDecoder().raw_decode(decoded, match.end())
        except ValueError:
            continue
        if isinstance(value, list) and value and all(isinstance(c, dict) and "name" in c for c in value):
            return value
    return None


def _is_split(entry: Any) -> bool:
    return isinstance(entry, dict) and set(entry) == {"annotations", "images"} and all(isinstance(v, str) for v in entry.values())


def _contradiction(num_classes: Optional[int], class_names: Optional[list], names: list[str], where: str) -> Optional[str]:
    """The line saying how data.num_classes / data.class_names disagree with the categories, or None."""
    background = str(class_names[0]) if class_names else BACKGROUND
    fix = f"data.num_classes={len(names) + 1} data.class_names=[{','.join([background, *names])}]"
    if num_classes is not None and num_classes != len(names) + 1:
        return (f"data.num_classes={num_classes} contradicts {where}: {len(names)} categor{'y' if len(names) == 1 else 'ies'} "
                f"({', '.join(names)}) plus background make {len(names) + 1} classes; use {fix}.")
    if class_names is not None and [str(name) for name in class_names[1:]] != names:
        return (f"data.class_names={list(class_names)} contradicts {where}: class 0 is the background, then each category "
                f"in that order; use {fix}.")
    return None


def _refuse(problem: Optional[str]) -> None:
    if problem:
        raise DataError(problem)


@dataclass(frozen=True)
class Part:
    """One split to convert: its instances file, its image folder, and for a split carved out of the train
    file, the validation share (`carve`) that the val part takes and the train part leaves."""

    role: str
    annotations: Path
    images: Path
    carve: Optional[float] = None
    test_carve: Optional[float] = None  # likewise the test share, after validation's in the same seeded order

    @property
    def label(self) -> str:
        """What the cache folder, the manifest and the shards are named by: the image folder (train2017)."""
        return f"{self.images.name}-{self.role}" if self.carve is not None or self.test_carve is not None else self.images.name

    def test_share(self) -> dict:
        """{"test_fraction": share} when a test split is carved (what the cache and lineage are keyed by), else {}: the
        keys of a file without one stay as they were before test shares existed."""
        return {} if self.test_carve is None else {"test_fraction": self.test_carve}


def plan(root: Path, train: dict, val: Optional[dict], test: Optional[dict], val_fraction: float,
         test_fraction: float = 0.0) -> dict[str, Part]:
    """The splits' files, checked to exist (one line naming the missing one and the fix)."""
    if not root.is_dir():
        raise DataError(f"data.source.path={root} does not exist: give the folder of the COCO-format data "
                        f"(COCO 2017: download it from {DOWNLOAD} and unpack it there).")
    parts = {}
    for role, entry in (("train", train), ("val", val), ("test", test)):
        if entry is None:
            continue
        annotations, images = root / entry["annotations"], root / entry["images"]
        if not annotations.is_file():
            raise DataError(f"{annotations} is missing: set data.source.{role}.annotations to the split's instances JSON "
                            f"(relative to {root}), or for COCO 2017 unpack annotations_trainval2017.zip into {root} (from {DOWNLOAD}).")
        if not images.is_dir() or not any(images.iterdir()):
            raise DataError(f"{images} is missing or empty: set data.source.{role}.images to the folder of the split's images "
                            f"(relative to {root}), or for COCO 2017 unpack {images.name}.zip into {root} (from {DOWNLOAD}).")
        parts[role] = Part(role, annotations, images)
    shares = dict(carve=val_fraction if val is None else None,
                  test_carve=test_fraction if test is None and test_fraction > 0 else None)
    for role in [role for role, share in (("val", shares["carve"]), ("test", shares["test_carve"])) if share is not None]:
        own = {**shares, "test_carve": None} if role == "val" else shares  # validation comes first: test's share is not its
        parts[role] = Part(role, parts["train"].annotations, parts["train"].images, **own)
    parts["train"] = replace(parts["train"], **shares)
    return {role: parts[role] for role in ROLES if role in parts}


def read(files: list[str], count: int, deterministic: bool):
    """Shards -> `(uint8 image (H, W, 3), int32 mask (H, W))`, read and decoded in parallel."""
    import tensorflow as tf

    features = {"image": tf.io.FixedLenFeature([], tf.string), "mask": tf.io.FixedLenFeature([], tf.string)}

    def decode(record):
        example = tf.io.parse_single_example(record, features)
        image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)  # JPEG or PNG
        image.set_shape([None, None, 3])
        mask = tf.cast(tf.io.decode_png(example["mask"], channels=1)[..., 0], tf.int32)
        return image, mask

    pairs = _records(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return pairs.apply(tf.data.experimental.assert_cardinality(count))


def _records(files: list[str]):
    """The shards' records in the one order `read` and `record_names` share."""
    import tensorflow as tf

    return tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)


def record_names(files: list[str]) -> list[str]:
    """Each record's image file name (as the JSON gives it), in `read`'s order; no image is decoded."""
    import tensorflow as tf

    feature = {"name": tf.io.FixedLenFeature([], tf.string)}
    names = _records(files).map(lambda record: tf.io.parse_single_example(record, feature)["name"])
    return [name.decode() for name in names.as_numpy_iterator()]


def cache_key(part: Part, **settings: Any) -> str:
    """A digest of what the records hold: the annotation file's bytes, the image folder, the settings (the
    images themselves are keyed by their stamps, in the manifest and in the shards' names)."""
    with part.annotations.open("rb") as file:
        content = hashlib.file_digest(file, "sha256").hexdigest()
    described = dict(format=FORMAT_VERSION, annotations=content, images=str(part.images.resolve()), role=part.role,
                     carve=part.carve, **part.test_share(), **settings)
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def convert(part: Part, cache_dir: Path, *, classes: Optional[list[str]], negative_fraction: Optional[float],
            shards: int, seed: int, ignore_index: Optional[int]) -> tuple[list[str], int, list[str]]:
    """Convert one split once; its shard files, number of examples and class names (reusing a complete
    conversion whose images are unchanged).  One run converts a folder at a time: another waits, then reuses."""
    settings = dict(classes=classes, negative_fraction=negative_fraction, shards=shards, seed=seed, ignore_index=ignore_index)
    out = cache_dir / f"{part.label}-{cache_key(part, **settings)}"
    done = reusable(out, part)
    if done is None:
        with one_converter(out, part.label):
            done = reusable(out, part, say=True) or _convert(out, part, settings)
    return done


def reusable(out: Path, part: Part, say: bool = False) -> Optional[tuple[list[str], int, list[str]]]:
    """The complete conversion in `out` whose images still have the stamps it recorded (name, size, mtime_ns:
    one `stat` each, no bytes read), or None; with `say`, log why it cannot be reused."""
    manifest = out / f"{part.label}.json"
    if not manifest.is_file():
        return None
    done = json.loads(manifest.read_text())
    files = [str(out / name) for name in done["shards"]]
    if not all(Path(f).is_file() for f in files):
        return None
    recorded = done.get("images")  # None: converted before images were stamped, so converted again once
    now = filecache.stamps([row[0] for row in recorded or []], part.images)
    changed = [new[0] for new, old in zip(now, recorded) if new != old] if recorded is not None else ["(not stamped)"]
    if changed:
        if say:
            log.info("coco %s: %d image(s) changed since the conversion in %s, e.g. %s: converting their shards again",
                     part.label, len(changed), out, ", ".join(changed[:MAX_NAMED]))
        return None
    log.info("coco %s: reusing %d examples in %s", part.label, done["count"], out)
    return files, done["count"], done["classes"]


@contextmanager
def one_converter(out: Path, label: str) -> Iterator[None]:
    """Hold an exclusive lock on `out` (flock: the kernel releases it when the process ends, however it ends),
    waiting for a run that holds it.  Without locks (some FUSE mounts) two runs may both convert: each shard is
    renamed into place whole and both write the same bytes under the same name, so neither corrupts the other."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("coco %s: another run is converting it in %s: waiting for it", label, out)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks
        yield
    finally:
        os.close(fd)  # releases the lock


def _convert(out: Path, part: Part, settings: dict) -> tuple[list[str], int, list[str]]:
    """Convert the split into `out` (under its lock): the shards whose images' stamps have no shard yet, then
    the manifest, then the superseded shards go."""
    coco = load_annotations(part.annotations)
    classes, label_of = resolve(coco, settings["classes"], str(part.annotations))
    image_ids = select(coco, part, label_of, settings["negative_fraction"], settings["seed"])
    # Stamped before their bytes are read: an image replaced during the conversion is converted again next time.
    stamped = filecache.stamps([coco.imgs[i]["file_name"] for i in image_ids], part.images)
    missing = [name for name, size, _ in stamped if size is None]
    if missing:
        raise DataError(f"{len(missing)} images listed in {part.annotations} are missing from {part.images}, e.g. "
                        f"{', '.join(missing[:MAX_NAMED])}: put them there, or point data.source.{part.role}.images at "
                        f"their folder (COCO 2017: unpack {part.images.name}.zip from {DOWNLOAD}).")
    (out / "settings.json").write_text(json.dumps(dict(annotations=str(part.annotations), images=str(part.images),
                                                       carve=part.carve, **part.test_share(), **settings), indent=1))
    names = write_shards(out, part, coco, label_of, image_ids, stamped, settings["shards"], settings["ignore_index"])
    # Shards of an earlier, interrupted conversion were written by the same rules: read their counts back.
    count = sum(1 for name in names for _ in _records([str(out / name)]))
    if count == 0:
        raise DataError(f"coco {part.label}: none of the {len(image_ids)} selected images in {part.images} can be decoded.")
    atomic.write_bytes(out / f"{part.label}.json", json.dumps(dict(count=count, shards=names, classes=classes, images=stamped)).encode())
    # Shards of replaced images, which no manifest names now (a run still reading them fails on its next epoch).
    atomic.remove([p for p in out.glob(f"{part.label}-*.tfrecord") if SHARD.fullmatch(p.name) and p.name not in names])
    log.info("coco %s: %d examples in %d shards in %s", part.label, count, len(names), out)
    return [str(out / name) for name in names], count, classes


def write_shards(out: Path, part: Part, coco: COCO, label_of: dict[int, int], image_ids: list[int], stamped: list[list],
                 shards: int, ignore_index: Optional[int]) -> list[str]:
    """Write the shards not there yet (image i goes to shard i mod n, named by a digest of its images' stamps);
    their names, complete ones included."""
    for stale in atomic.leftovers(out):  # left by an interrupted conversion (not by another job still converting)
        stale.unlink(missing_ok=True)
    n_shards = min(shards, len(image_ids))
    names = [f"{part.label}-{i:05d}-of-{n_shards:05d}-{_digest(stamped[i::n_shards])}.tfrecord" for i in range(n_shards)]
    todo = [i for i, name in enumerate(names) if not (out / name).is_file()]
    skipped: list[str] = []
    total = sum(len(image_ids[i::n_shards]) for i in todo)
    with tqdm(total=total, desc=f"coco {part.label} -> TFRecords", unit="img", mininterval=1.0) as bar:
        for i in todo:
            skipped += _write_shard(out / names[i], coco, label_of, part, image_ids[i::n_shards], ignore_index, bar)
    if skipped:
        log.warning("coco %s: skipped %d image(s) that cannot be decoded: %s", part.label, len(skipped),
                    ", ".join(skipped[:MAX_NAMED]))
    log.info("coco %s: wrote %d of its %d shards", part.label, len(todo), n_shards)
    return names


def _digest(rows: list[list]) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:STAMP_CHARS]


def load_annotations(annotations: Path) -> COCO:
    """pycocotools' index of an instances file; a DataError naming the file when it is not one (cut short
    by an interrupted download or unpacking, or another JSON file), instead of a JSONDecodeError without it."""
    try:
        with redirect_stdout(io.StringIO()) as progress:  # pycocotools prints its steps ("loading annotations ...")
            coco = COCO(str(annotations))
        log.debug("pycocotools: %s", " ".join(progress.getvalue().split()))
    except json.JSONDecodeError as err:
        raise DataError(_not_json(annotations, err)) from None
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as err:  # JSON, but not COCO's layout
        raise DataError(f"{annotations} is not a COCO instances file ({type(err).__name__}: {err}); {_again()}.") from None
    _refuse(_inconsistent(coco, annotations))
    return coco


def _inconsistent(coco: COCO, annotations: Path) -> Optional[str]:
    """What pycocotools' index passes over without a word: an image id listed twice (one entry lost), an annotation
    of an image or a category the file does not list (it would be dropped, its pixels background)."""
    ids = Counter(image["id"] for image in coco.dataset.get("images", []))
    twice = sorted(i for i, n in ids.items() if n > 1)
    if twice:
        return (f"{annotations}: image id {twice[0]} is listed {ids[twice[0]]} times ({len(twice)} ids listed more than "
                "once): give each image its own id.")
    for ann in coco.dataset.get("annotations", []):
        for key, known, what, listed in (("image_id", coco.imgs, "image", "images"),
                                         ("category_id", coco.cats, "category", "categories")):
            if ann.get(key) not in known:
                return (f"{annotations}: annotation {ann.get('id')} has {key} {ann.get(key)!r}, which no {what} of the file "
                        f"has: add that {what} to \"{listed}\", or remove the annotation.")
    return None


def _again() -> str:
    return f"write or unpack it again (COCO 2017: annotations_trainval2017.zip from {DOWNLOAD})"


def _not_json(annotations: Path, err: json.JSONDecodeError) -> str:
    return (f"{annotations} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}): "
            f"the file is incomplete or damaged; {_again()}.")


def _no_categories(where: str) -> str:
    return f"{where} lists no categories: give a COCO instances file (its \"categories\" name each class)."


def resolve(coco: COCO, classes: Optional[list[str]], where: str) -> tuple[list[str], dict[int, int]]:
    """The class names (null: the file's categories in its order) and each category id's label (1, 2, ...)."""
    ids_of: dict[str, list[int]] = {}
    for category in coco.dataset.get("categories", []):
        ids_of.setdefault(str(category["name"]), []).append(category["id"])
    if not ids_of:
        raise DataError(_no_categories(where))
    classes = list(ids_of) if classes is None else classes
    unknown = [name for name in classes if name not in ids_of]
    if unknown:
        raise DataError(f"{where} has no category named {unknown[0]!r} (it has: {', '.join(ids_of)}): "
                        "name categories from that list in data.source.categories.")
    return classes, {cat_id: label for label, name in enumerate(classes, start=1) for cat_id in ids_of[name]}


def select(coco: COCO, part: Part, label_of: dict[int, int], negative_fraction: Optional[float], seed: int) -> list[int]:
    """The split's image ids: the train or val share of a carved file, then (unless `negative_fraction` is null,
    which keeps them all) the images with a category plus seeded others making up `negative_fraction`."""
    image_ids = sorted(coco.imgs)
    if part.carve is not None or part.test_carve is not None:  # seglab.data.carve's parts of the file's images
        fractions = {role: f for role, f in (("val", part.carve), ("test", part.test_carve)) if f is not None}
        image_ids = [image_ids[i] for i in carve(len(image_ids), fractions, seed)[part.role]]
    if not image_ids:
        raise DataError(f"{part.annotations}: the {part.role} split has no images; check data.source.{part.role}"
                        + (" and data.source.val_fraction / test_fraction." if part.carve or part.test_carve else "."))
    if negative_fraction is None:
        return image_ids
    holding = set().union(*(coco.catToImgs.get(cat_id, []) for cat_id in label_of))
    positives = [i for i in image_ids if i in holding]
    if not positives:
        wanted = " or a ".join(repr(name) for name in dict.fromkeys(coco.cats[c]["name"] for c in label_of))
        raise DataError(f"{part.annotations}: zero images contain a {wanted}; check data.source.path and the split files.")
    others = [i for i in image_ids if i not in holding]
    wanted = round(len(positives) * negative_fraction / (1.0 - negative_fraction))
    negatives = np.random.default_rng(seed).permutation(others)[:wanted].tolist() if wanted else []
    return sorted(positives + [int(i) for i in negatives])


def mask_for(coco: COCO, image_id: int, label_of: dict[int, int], ignore_index: Optional[int]) -> np.ndarray:
    """(H, W) uint8 labels: instances painted largest first, so the smaller wins where two overlap (equal
    areas: the later annotation); crowd regions that no instance covers get `ignore_index`."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    instances, crowds = [], []
    for order, ann in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=list(label_of), iscrowd=None))):
        try:
            region = coco.annToMask(ann).astype(bool)
        except Exception as err:  # pycocotools' own, e.g. "input type is not supported." for a polygon of 3 numbers
            raise DataError(f"annotation {ann.get('id')} of image {info['file_name']}: its segmentation cannot be decoded "
                            f"({errors.one_line(err)}): give polygons of 6 or more numbers (x, y pairs), or an RLE.") from None
        if region.shape != mask.shape:
            raise DataError(f"annotation {ann.get('id')} of image {info['file_name']} is {region.shape[1]}x{region.shape[0]} "
                            f"but the image is {mask.shape[1]}x{mask.shape[0]} in the JSON: fix its RLE \"size\".")
        (crowds if ann.get("iscrowd", 0) else instances).append((-int(region.sum()), order, label_of[ann["category_id"]], region))
    if ignore_index is None:  # crowds count as their category, under the instances
        for _, _, label, region in crowds:
            mask[region] = label
    covered = np.zeros(mask.shape, bool)
    for _, _, label, region in sorted(instances, key=lambda item: item[:2]):
        mask[region] = label
        covered |= region
    if ignore_index is not None:
        for _, _, _, region in crowds:
            mask[region & ~covered] = ignore_index
    return mask


def _write_shard(path: Path, coco: COCO, label_of: dict[int, int], part: Part, image_ids: list[int], ignore_index, bar) -> list[str]:
    """Write one shard under a temporary name, renamed when complete; return the images skipped
    because they cannot be decoded (each logged with its file)."""
    import tensorflow as tf

    skipped = []

    def feature(value: bytes | int):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def write(temporary: str) -> None:
        with tf.io.TFRecordWriter(temporary) as writer:
            for image_id in image_ids:
                bar.update(1)
                info = coco.imgs[image_id]
                file = part.images / info["file_name"]
                encoded = image_bytes(file, (info["width"], info["height"]), part.annotations)
                if isinstance(encoded, str):
                    log.warning("coco: skipping %s: %s", file, encoded)
                    skipped.append(str(file))
                    continue
                png = io.BytesIO()
                Image.fromarray(mask_for(coco, image_id, label_of, ignore_index)).save(png, "PNG")
                record = {"image": feature(encoded), "mask": feature(png.getvalue()), "image_id": feature(int(image_id)),
                          "name": feature(str(info["file_name"]).encode())}
                writer.write(tf.train.Example(features=tf.train.Features(feature=record)).SerializeToString())

    atomic.write(path, write)  # a shard under its final name is always complete
    return skipped


def image_bytes(file: Path, size: tuple[int, int], annotations: Path) -> bytes | str:
    """The file's bytes when TensorFlow decodes them as stored (JPEG, PNG), else re-encoded as PNG; or why it
    cannot be decoded.  Decoding it fully here costs once per conversion; a broken file found by TensorFlow
    would stop every epoch."""
    encoded = file.read_bytes()
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
            if image.size != size:
                raise DataError(f"{file} is {image.size[0]}x{image.size[1]} but {annotations} gives it {size[0]}x{size[1]}: "
                                "the masks would not fit it; fix the file's \"width\"/\"height\" there or the image.")
            modes = KEPT_AS_IS.get(image.format, ())
            if modes is None or image.mode in modes:
                return encoded
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "PNG")
            return buffer.getvalue()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"not a readable image ({str(err).splitlines()[0] if str(err) else type(err).__name__})"


def find(path: Path) -> Optional[dict]:
    """The `data.source` arguments that read PATH as COCO, or None: PATH is a folder whose annotations/*.json
    hold "images", "annotations" and "categories" (instances_train*.json the train split, *val* val, *test*
    test), or such a JSON file itself (its images beside it or in a folder named by its split)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        root = path.parent.parent if path.parent.name == "annotations" else path.parent
        files = [path]
    elif (path / "annotations").is_dir():
        root, files = path, sorted((path / "annotations").glob("*.json"), key=lambda f: (not f.name.startswith("instances"), f.name))
    else:
        return None
    found: dict[str, dict] = {}
    for file in files:
        role = next((r for r in ROLES if r in file.stem.lower()), None) or ("train" if len(files) == 1 else None)
        images = _image_folder(root, file, role) if role and role not in found else None
        if images is not None and _looks_like_coco(file):
            found[role] = {"annotations": str(file.relative_to(root)), "images": str(images.relative_to(root)) or "."}
    if "train" not in found:
        return None
    return {"path": str(root), "train": found["train"], "val": found.get("val"), "test": found.get("test")}


def _image_folder(root: Path, file: Path, role: str) -> Optional[Path]:
    """Where a split's images are: the folder named as the file after `instances_` (train2017), or by the split."""
    named = file.stem.split("instances_")[-1]
    candidates = [root / named, root / "images" / named, root / role, root / "images" / role, root / "images", file.parent]
    return next((folder for folder in candidates if folder.is_dir() and folder.name != "annotations"
                 and any(f.suffix.lower() in (".jpg", ".jpeg", ".png") for f in folder.iterdir())), None)


def _looks_like_coco(file: Path) -> bool:
    """Whether a JSON file has COCO's three keys, without parsing it: a 450 MB train file is read only up
    to its "annotations" key (its "categories" end the file)."""
    keys = [b'"images"', b'"annotations"', b'"categories"']
    with file.open("rb") as stream:
        if not stream.read(HEAD_BYTES).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
            return False
        stream.seek(max(0, file.stat().st_size - TAIL_BYTES))
        tail = stream.read()
        keys = [key for key in keys if key not in tail]
        stream.seek(0)
        carried = b""
        while keys:
            chunk = stream.read(CHUNK_BYTES)
            if not chunk:
                return False
            keys = [key for key in keys if key not in carried + chunk]
            carried = chunk[-16:]
    return True

"""Oxford-IIIT Pet (Parkhi et al., CVPR 2012): 7,349 photos of 37 cat and dog breeds with pixel trimaps.

Two sources, chosen by `data.source.kind`:

- `tfds` (default): tensorflow-datasets' `oxford_iiit_pet` (4.x) prepared in `data.source.tfds_dir`.
  Train = `train[:90%]`, validation = `train[90%:]` (with `val_percent: 10`; tfds fixes the order
  of the train split when it builds the data set, so the split is the same on every machine),
  test = the official `test` split, in `Splits.test` for an explicit evaluation only.
- `folder`: the two archives unpacked by hand into `data.source.path` (`images/*.jpg`,
  `annotations/trimaps/*.png`, and `annotations/trainval.txt` / `test.txt` when present).  The
  trainval names, sorted, are shuffled with `split_seed` and the last `val_percent` % become the
  validation split; without `trainval.txt` every image not listed in `test.txt` is trainval.
  The archive's quirks are handled: `.jpg` files that are really PNG (RGBA) or GIF and grayscale
  images are decoded to RGB; a file that cannot be decoded is skipped with a warning naming it.

Trimap values 1 pet, 2 background, 3 border are shifted to labels 0, 1, 2 (the order of
`data=shapes`).  Masks are only ever resized nearest-neighbour (`pipeline.prepare`).
"""

# Lazy imports: tensorflow-datasets takes seconds to import and only data.source.kind=tfds needs it.

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from seglab.data import LABEL_ERROR_MARKER, DataError, Provenance, Splits, check_labels
from seglab.util import net
from seglab.util.images import ends_like_jpeg

log = logging.getLogger(__name__)

TFDS_NAME = "oxford_iiit_pet"
DOWNLOAD_URL = "https://thor.robots.ox.ac.uk/"  # where tfds' oxford_iiit_pet 4.x downloads its archives from
ARCHIVES_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
CLASS_NAMES = ("pet", "background", "border")
TRIMAP_FIRST_VALUE = 1  # trimaps use 1, 2, 3; labels start at 0
TRIMAP_RANGE_ERROR = LABEL_ERROR_MARKER + (
    " an Oxford-IIIT Pet trimap holds a value outside 1..3 (pet, background, border), which data.num_classes=3 "
    "cannot represent: these masks are not the archive's trimaps"
)
TF_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")  # what tf.io.decode_image reads
MAX_NAMED = 5  # file names quoted in an error message
SCAN_THREADS = 8  # header reads are I/O-bound


def build(
    kind: str = "tfds",
    tfds_dir: str = "~/tensorflow_datasets",
    version: str = "4.*.*",
    path: str | None = None,
    val_percent: int = 10,
    split_seed: int = 0,
    connect_timeout: float = 5.0,
    num_classes: int = len(CLASS_NAMES),
    deterministic: bool = True,
) -> Splits:
    """The `data=pets` source: train, validation and test splits of `(uint8 RGB image, int32 labels)`."""
    if num_classes != len(CLASS_NAMES):
        raise DataError(
            f"data.num_classes={num_classes} contradicts the Oxford-IIIT Pet trimaps, which have {len(CLASS_NAMES)} "
            f"labels ({', '.join(CLASS_NAMES)}): use data.num_classes={len(CLASS_NAMES)}."
        )
    if kind == "tfds":
        splits = _from_tfds(os.path.expanduser(tfds_dir), version, val_percent, connect_timeout, deterministic)
    elif kind == "folder":
        splits = _from_folder(Path(path or "").expanduser(), val_percent, split_seed, deterministic)
    else:
        raise DataError(f"data.source.kind={kind!r} is not a pets source: use tfds or folder.")
    for name in ("train", "val", "test"):
        if getattr(splits, name) is not None:
            check_labels(getattr(splits, name), num_classes, None, f"{TFDS_NAME} ({kind}, {name} split)")
    return splits


def trimap_to_labels(trimap, source=None):
    """Trimap values 1, 2, 3 -> int32 labels 0, 1, 2; any other value stops the pipeline with a clear
    error naming `source` (the trimap file, a string tensor) when known."""

    labels = tf.cast(trimap, tf.int32) - TRIMAP_FIRST_VALUE
    in_range = tf.reduce_all((labels >= 0) & (labels < len(CLASS_NAMES)))
    message = [TRIMAP_RANGE_ERROR] if source is None else [TRIMAP_RANGE_ERROR, "file:", source]
    with tf.control_dependencies([tf.debugging.Assert(in_range, message)]):
        return tf.identity(labels)


# --- tensorflow-datasets ---------------------------------------------------------------------


def _from_tfds(tfds_dir: str, version: str, val_percent: int, timeout: float, deterministic: bool) -> Splits:
    import tensorflow_datasets as tfds  # seconds to import, and only data.source.kind=tfds needs it

    builder = tfds.builder(f"{TFDS_NAME}:{version}", data_dir=tfds_dir)
    if not builder.is_prepared():
        # tfds itself would retry the download for minutes without a network; ask once, briefly.
        _check_reachable(builder.data_dir, tfds_dir, timeout)
        log.info("preparing %s in %s (downloads about 800 MB once)", TFDS_NAME, tfds_dir)
        builder.download_and_prepare()

    def read(split: str):
        examples = builder.as_dataset(split=split, shuffle_files=False)
        pairs = examples.map(
            lambda ex: (ex["image"], trimap_to_labels(ex["segmentation_mask"][..., 0])),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
        known = builder.info.splits[split].num_examples if builder.info.splits else 0
        return pairs.apply(tf.data.experimental.assert_cardinality(known)) if known else pairs

    def about(split: str) -> Provenance:
        # The prepared record files of the split's tfds split (train or test), digested with the slice spec.
        files = sorted(str(p) for p in Path(builder.data_dir).glob(f"{TFDS_NAME}-{split.split('[')[0]}.tfrecord*"))
        return Provenance({"kind": "tfds", "name": TFDS_NAME, "version": str(builder.version), "split": split,
                           "data_dir": builder.data_dir}, files=files, selection=split)

    cut = 100 - val_percent
    log.info("%s from tfds: train = train[:%d%%], val = train[%d%%:], test = test", TFDS_NAME, cut, cut)
    specs = {"train": f"train[:{cut}%]", "val": f"train[{cut}%:]", "test": "test"}
    return Splits(train=read(specs["train"]), val=read(specs["val"]), test=read(specs["test"]),
                  about={name: about(spec) for name, spec in specs.items()})


def prepare_command(tfds_dir: str) -> str:
    """The shell command that downloads and prepares the data set into tfds_dir (`tfds build` would need apache_beam)."""
    return f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{TFDS_NAME}', data_dir='{tfds_dir}').download_and_prepare()\""


def _check_reachable(expected_dir: str, tfds_dir: str, timeout: float) -> None:
    problem = net.unreachable(DOWNLOAD_URL, timeout)
    if problem is None:
        return
    raise DataError(
        f"The data set {TFDS_NAME} is not prepared in data.source.tfds_dir={tfds_dir} (looked for {expected_dir}) "
        f"and its download cannot start ({problem}). Either prepare it on a machine with a network: "
        f"run this command there (seglab prepares it into data.source.tfds_dir, about 800 MB) or "
        f"`{prepare_command(tfds_dir)}`, and copy {tfds_dir}/{TFDS_NAME} here; or download "
        f"images.tar.gz and annotations.tar.gz from {ARCHIVES_URL}, unpack both into DIR and run with "
        f"data.source.kind=folder data.source.path=DIR. data=shapes needs no download and works offline."
    )


# --- the unpacked archives -------------------------------------------------------------------


def _from_folder(root: Path, val_percent: int, split_seed: int, deterministic: bool) -> Splits:
    images_dir, trimaps_dir, lists_dir = root / "images", root / "annotations" / "trimaps", root / "annotations"
    for folder in (root, images_dir, trimaps_dir):
        if not folder.is_dir():
            raise DataError(
                f"data.source.path={root}: {folder} is not a directory. kind=folder expects the Oxford-IIIT Pet "
                f"archives (images.tar.gz, annotations.tar.gz from {ARCHIVES_URL}) unpacked into one folder: "
                f"DIR/images/*.jpg and DIR/annotations/trimaps/*.png."
            )
    on_disk = sorted(p.stem for p in images_dir.glob("*.jpg") if not p.name.startswith("._"))  # ._*: macOS forks
    if not on_disk:
        raise DataError(f"data.source.path={root}: no *.jpg images in {images_dir}.")
    test = _read_list(lists_dir / "test.txt")
    trainval = _read_list(lists_dir / "trainval.txt")
    if trainval is None:
        trainval = [name for name in on_disk if name not in set(test or ())]
    _check_pairs(images_dir, trimaps_dir, trainval + (test or []))

    order = np.random.default_rng(split_seed).permutation(sorted(trainval))
    n_val = max(1, round(len(order) * val_percent / 100))
    if len(order) - n_val < 1:
        raise DataError(f"data.source.path={root}: {len(order)} trainval images are too few to split off a validation set.")
    train, val = [str(n) for n in order[:-n_val]], [str(n) for n in order[-n_val:]]

    # The split is made before broken files are dropped, so that a file that breaks moves no other image.
    skipped = _undecodable(images_dir, trimaps_dir, trainval + (test or []))
    kept = {which: [n for n in names if n not in skipped] for which, names in (("train", train), ("val", val), ("test", test or []))}
    for which, names in (("train", train), ("val", val)):
        if not kept[which]:
            first = next(n for n in names if n in skipped)
            raise DataError(
                f"data.source.path={root}: none of the {len(names)} images of the {which} split can be decoded, e.g. "
                f"{skipped[first]}: unpack images.tar.gz and annotations.tar.gz (from {ARCHIVES_URL}) into it again."
            )
    for name, problem in skipped.items():
        log.warning("skipping %s: %s", name, problem)
    if skipped:
        log.warning("skipped %d of %d image/trimap pairs that cannot be decoded", len(skipped), len(trainval) + len(test or []))

    def split(names):
        return _decode_pairs(images_dir, trimaps_dir, [n for n in names if n not in skipped], deterministic)

    def about(names, which: str) -> Provenance:
        kept = [n for n in names if n not in skipped]
        files = [str(d / f"{n}{ext}") for n in kept for d, ext in ((images_dir, ".jpg"), (trimaps_dir, ".png"))]
        # Without determinism the parallel decode may reorder the examples: their names are then unknown.
        return Provenance({"kind": "folder", "path": str(root), "split": which, "val_percent": val_percent,
                           "split_seed": split_seed}, files=files, names=[f"{n}.jpg" for n in kept] if deterministic else None)

    log.info("%s from %s: %d train, %d val, %d test", TFDS_NAME, root, len(kept["train"]), len(kept["val"]), len(kept["test"]))
    return Splits(train=split(train), val=split(val), test=split(test) if kept["test"] else None,
                  about={"train": about(train, "train"), "val": about(val, "val"), **({"test": about(test, "test")} if test else {})})


def _read_list(path: Path) -> list[str] | None:
    """Image names from an archive list file (`name class species breed` per line), or None if absent."""
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]


def _check_pairs(images_dir: Path, trimaps_dir: Path, names: list[str]) -> None:
    missing = [n for n in names if not (images_dir / f"{n}.jpg").is_file() or not (trimaps_dir / f"{n}.png").is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} images have no matching pair of {images_dir}/<name>.jpg and {trimaps_dir}/<name>.png, "
            f"e.g. {', '.join(missing[:MAX_NAMED])}. Unpack both archives completely, or remove the names from "
            f"annotations/trainval.txt / test.txt."
        )


def _undecodable(images_dir: Path, trimaps_dir: Path, names: list[str]) -> dict[str, str]:
    """Names whose image or trimap cannot be decoded -> why; a size mismatch is an error instead."""
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        sizes = list(pool.map(lambda n: (_header(images_dir / f"{n}.jpg"), _header(trimaps_dir / f"{n}.png")), names))
    skipped, mismatched = {}, []
    for name, (image, trimap) in zip(names, sizes):
        for problem in (image, trimap):
            if isinstance(problem, str):
                skipped.setdefault(name, problem)
        if name not in skipped and image != trimap:
            mismatched.append(f"{name} (image {image[0]}x{image[1]}, trimap {trimap[0]}x{trimap[1]})")
    if mismatched:
        raise DataError(f"{len(mismatched)} image/trimap pairs differ in size: {', '.join(mismatched[:MAX_NAMED])}.")
    return skipped


def _header(path: Path) -> tuple[int, int] | str:
    """(width, height) from the file's header, or why it cannot be decoded."""

    try:
        with Image.open(path) as image:
            if image.format not in TF_IMAGE_FORMATS:
                return f"{path} is {image.format}, which TensorFlow cannot decode"
            size = image.size
            if image.format == "JPEG" and not ends_like_jpeg(path):
                image.load()  # a JPEG cut short (TensorFlow would stop mid-epoch on it); one with trailing bytes loads
            else:
                image.verify()  # PNG: every chunk's checksum; catches truncated files
            return size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        return f"{path} cannot be decoded ({err})"



def _decode_pairs(images_dir: Path, trimaps_dir: Path, names: list[str], deterministic: bool):

    images = [str(images_dir / f"{n}.jpg") for n in names]
    trimaps = [str(trimaps_dir / f"{n}.png") for n in names]

    def decode(image_path, trimap_path):
        # decode_image reads the content, not the extension: PNG (RGBA -> RGB), GIF (first frame), grayscale -> RGB
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        trimap = tf.io.decode_image(tf.io.read_file(trimap_path), channels=1, expand_animations=False)
        trimap.set_shape([None, None, 1])
        return image, trimap_to_labels(trimap[..., 0], trimap_path)

    pairs = tf.data.Dataset.from_tensor_slices((images, trimaps))
    return pairs.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)

"""Oxford-IIIT Pet (Parkhi et al., CVPR 2012): 7,349 photos of 37 cat and dog breeds with pixel trimaps.

Two sources, chosen by `data.source.kind`:

- `tfds` (default): tensorflow-datasets' `oxford_iiit_pet` (4.x) prepared in `data.source.tfds_dir`.
  Train = `train[:90%]`, validation = `train[90%:]` (with `val_percent: 10`; tfds fixes the order
  of the train split when it builds the data set, so the split is the same on every machine),
  test = the official `test` split, in `Splits.test` for an explicit evaluation only.
- `folder`: the two archives unpacked by hand into `data.source.path` (`images/*.jpg`,
  `annotations/trimaps/*.png`, and `annotations/trainval.txt` / `test.txt` when present), read by
  `data=folder` with `FOLDER_OPTIONS` below: this module only checks the archive's folders (its
  messages say which archives to unpack) and passes `val_percent` / `split_seed` on as folder's
  `val_fraction` / `seed`.  The trainval names, sorted, are shuffled with `split_seed` and the last
  `val_percent` % become the validation split; without `trainval.txt` every image not listed in
  `test.txt` is trainval.  The archive's quirks are handled: `.jpg` files that are really PNG (RGBA)
  or GIF and grayscale images are decoded to RGB; a file that cannot be decoded is skipped with a
  warning naming it; a trimap value outside 1..3 stops the run naming the file.

Trimap values 1 pet, 2 background, 3 border are shifted to labels 0, 1, 2 (the order of
`data=shapes`).  Masks are only ever resized nearest-neighbour (`pipeline.prepare`).
"""

# Lazy imports: tensorflow-datasets takes seconds to import and only data.source.kind=tfds needs it.

from __future__ import annotations

import logging
import os
from pathlib import Path

import tensorflow as tf

from seglab.data import LABEL_ERROR_MARKER, DataError, Provenance, Splits, check_labels, folder
from seglab.util import net

log = logging.getLogger(__name__)

TFDS_NAME = "oxford_iiit_pet"
DOWNLOAD_URL = "https://thor.robots.ox.ac.uk/"  # where tfds' oxford_iiit_pet 4.x downloads its archives from
ARCHIVES_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
CLASS_NAMES = ("pet", "background", "border")
TRIMAP_FIRST_VALUE = 1  # trimaps use 1, 2, 3; labels start at 0
TRIMAP_RANGE_ERROR = LABEL_ERROR_MARKER + (  # no quote marks: tf.debugging.Assert's message escapes them
    " an Oxford-IIIT Pet trimap holds a value outside 1..3 (pet, background, border), which data.num_classes=3 "
    "cannot represent: these masks are not the trimaps of the archive"
)


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
        return _from_folder(path, val_percent, split_seed, deterministic)  # checks its labels itself
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


# --- the unpacked archives: data=folder with the archive's options ---------------------------------

# The data=folder options (docs/own-data.md) that read the unpacked archives: `python -m seglab data=folder
# data.source.path=DIR` with these, data.ignore_index=null and the three classes gives the same splits.
FOLDER_OPTIONS = {
    "image_dir": "images",
    "mask_dir": "annotations/trimaps",
    "lists": {"train": "annotations/trainval.txt", "test": "annotations/test.txt"},  # each read when present
    "list_format": "name",  # `Abyssinian_100 1 1 1`: the name, then class, species and breed ids
    "label_map": {TRIMAP_FIRST_VALUE + label: label for label in range(len(CLASS_NAMES))},  # 1, 2, 3 -> 0, 1, 2
}


def _from_folder(path: str | None, val_percent: int, split_seed: int, deterministic: bool) -> Splits:
    root = Path(path or "").expanduser()
    images = root / FOLDER_OPTIONS["image_dir"]
    for place in (root, images, root / FOLDER_OPTIONS["mask_dir"]):
        if not place.is_dir():
            raise DataError(
                f"data.source.path={root}: {place} is not a directory. kind=folder expects the Oxford-IIIT Pet "
                f"archives (images.tar.gz, annotations.tar.gz from {ARCHIVES_URL}) unpacked into one folder: "
                f"DIR/images/*.jpg and DIR/annotations/trimaps/*.png."
            )
    if not any(images.glob("*.jpg")):
        raise DataError(f"data.source.path={root}: no *.jpg images in {images}.")
    splits = folder.build(str(root), **FOLDER_OPTIONS, val_fraction=val_percent / 100, seed=split_seed,
                          num_classes=len(CLASS_NAMES), ignore_index=None, deterministic=deterministic,
                          unmapped_error=TRIMAP_RANGE_ERROR)
    for split, about in splits.about.items():  # the records of runs before data=folder read the archives
        about.source = {"kind": "folder", "path": str(root), "split": split, "val_percent": val_percent,
                        "split_seed": split_seed}
    return splits


def find(path: Path) -> dict | None:
    """kind=folder's arguments when PATH holds the unpacked archives (for `python -m seglab.data inspect`), else None."""
    root = Path(path)
    images, trimaps = root / FOLDER_OPTIONS["image_dir"], root / FOLDER_OPTIONS["mask_dir"]
    if images.is_dir() and trimaps.is_dir() and any(images.glob("*.jpg")) and any(trimaps.glob("*.png")):
        return {"kind": "folder", "path": str(root)}
    return None

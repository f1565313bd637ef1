"""Data sources (one module each) and the shared tf.data pipeline.

A source builder returns `Splits`: unbatched `tf.data.Dataset`s of `(image, mask)` pairs, the
image uint8 RGB `(H, W, 3)` of any size, the mask integer labels `(H, W)`.  `pipeline.make`
turns a split into the batches the model trains on.  Beside the data, `Splits.about` says where
each split comes from (`Provenance`: the source, the files it is read from, the examples' file
names when known), for the run's dataset records (`seglab.data.lineage`) and per-image tables.
"""

# Lazy imports: TensorFlow loads when a pipeline is built, not when `python -m seglab.data` checks its arguments.

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import OmegaConf

from seglab.data import filecache
from seglab.errors import UserError, explain, one_line

log = logging.getLogger(__name__)

# Starts the message of an in-graph label check (tf.debugging.Assert), which TensorFlow can only raise as an
# InvalidArgumentError mid-epoch: seglab.errors finds it there and prints it as one line.
LABEL_ERROR_MARKER = "seglab label check:"
SCAN_CLASSES = 1 << 16  # data.num_classes while `inspect` scans a data set: no label or one-hot count is refused first
EMPTY_SPLIT_FIX = ("add images to it, or where it is a fraction split off (data.source.val_fraction, test_fraction) raise "
                   "that fraction, or give the split its own files")  # after "the SPLIT split holds no image: "
LABEL_CHECK_EXAMPLES = 8  # masks read by `check_labels` before training: enough to catch a wrong config, cheap


class DataError(UserError, RuntimeError):
    """The data cannot be read as configured; the message names what is missing and how to fix it."""


def cache_name(data_cfg, split: str, about: "Provenance") -> str:
    """The file-cache name of one split, a digest of what the split holds (seglab.data.filecache): the data
    settings that shape the cached examples (name, size, resize, ignore_index, every data.source key) and the
    split's source files (`about.files`: path, size, mtime_ns each), so that no run reads a cache of other data,
    other settings or files edited since."""
    data = OmegaConf.to_container(data_cfg, resolve=True)
    config = {key: data.get(key) for key in ("name", "image_size", "resize", "ignore_index", "source")}
    return f"{data_cfg.name}-{split}-{filecache.key(config, about.source, about.selection, about.files)}"


def batches_of(cfg, dataset, split: str, training: bool = False, cache: bool = True, epochs: range = range(1),
               about: Optional["Provenance"] = None):
    """`pipeline.make` with the config's settings: the batches training and the benchmark read.
    `cache=False` for a pass that reads only part of the split or reads it once (no cache to fill);
    `epochs`: training batches of those epochs, one after the other (pipeline.make); `about`: the split's
    Provenance (`Splits.about[split]`), which a file cache (data.cache=PREFIX) is keyed on."""
    from seglab.data import pipeline

    data = cfg.data
    chosen, name = cache_of(data, split, about) if cache else (None, split)
    return pipeline.make(
        dataset, image_size=data.image_size, resize=data.resize, ignore_index=data.ignore_index,
        batch_size=cfg.trainer.batch_size, training=training, seed=cfg.seed,
        deterministic=cfg.deterministic, augment_options=dict(data.augment) if training else None,
        cache=chosen, cache_name=name, shuffle_buffer=data.shuffle_buffer,
        epochs=epochs,
    )


def cache_of(data_cfg, split: str, about: Optional["Provenance"]) -> tuple[Optional[str], str]:
    """The cache `pipeline.make` gives a split (data.cache, or None: uncached) and its file cache's name.  A file
    cache needs the split's Provenance to be keyed on its content, and is used once complete or while this run
    holds its writer's lock (seglab.data.filecache)."""
    cache = data_cfg.cache
    if cache in (None, "memory"):
        return cache, split
    if about is None:
        log.warning("data.cache=%s: the source does not say which files the %s split reads (Splits.about), so no "
                    "cache of it could notice their change: reading it uncached.", cache, split)
        return None, split
    prefix, name = str(Path(cache).expanduser()), cache_name(data_cfg, split, about)
    if not filecache.claim(f"{prefix}-{name}"):
        log.warning("data.cache=%s: another run is filling the %s split's cache (%s-%s) now: this run reads the split "
                    "uncached.", cache, split, prefix, name)
        return None, name
    return prefix, name


@dataclass
class Provenance:
    """Where one split comes from."""

    source: dict  # what identifies it, e.g. {"kind": "tfds", "name": "oxford_iiit_pet", "version": "4.0.0", "split": "test"}
    files: Optional[list] = None  # the files it is read from, digested for lineage (None: digest the decoded examples)
    names: Optional[list] = None  # each example's file name, in the split's order (None: unknown, use the index)
    selection: str = ""  # the part of `files` that is the split, when they hold more (a tfds slice, e.g. train[:90%])


@dataclass
class Splits:
    train: Any  # tf.data.Dataset
    val: Any
    test: Optional[Any] = None
    about: dict = field(default_factory=dict)  # split name ("train", "val", "test") -> Provenance


def share(count: int, fraction: float) -> int:
    """The examples a seeded split takes: `fraction` of `count` rounded (half to even) from the decimal fraction as
    written (75 x 0.14 is 10.5 -> 10, where the float product 10.500000000000002 gave 11), one at least."""
    return max(1, round(count * Fraction(str(fraction))))


def carve(count: int, fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Seeded parts of range(count), as arrays and coco cut validation and test out of a training set: one permutation
    of `seed`, validation its first part, test the next (a test share leaves the seed's validation as it was), train
    the rest; each part's indices increasing.  Validation takes round(count * fraction) as it always did (one at
    least), test `share`'s count: unifying the two would move existing validation splits.  The caller refuses an empty
    train part, naming its own files."""
    order = np.random.default_rng(seed).permutation(count)
    parts, start = {}, 0
    for split in ("val", "test"):
        if split in fractions:
            size = max(1, round(count * fractions[split])) if split == "val" else share(count, fractions[split])
            parts[split], start = sorted(order[start : start + size].tolist()), start + size
    return {"train": sorted(order[start:].tolist()), **parts}


def check_labels(dataset, num_classes: int, ignore_index: Optional[int], where: str, count: int = LABEL_CHECK_EXAMPLES) -> None:
    """Fail before training if the first masks hold a label that is neither a class nor `ignore_index`."""
    import tensorflow as tf

    try:
        masks = [mask for _, mask in dataset.take(count).as_numpy_iterator()]
    except tf.errors.InvalidArgumentError as err:  # e.g. an in-graph check of a source's label range
        detail = explain(err) or one_line(err.message.split(" [[")[0])  # an in-graph check's own line, when it is one
        raise DataError(f"{where}: the first examples cannot be read: {detail}") from None
    for mask in masks:
        labels = set(np.unique(mask).tolist()) - {ignore_index}
        bad = sorted(label for label in labels if not 0 <= label < num_classes)
        if bad:
            raise DataError(
                f"{where}: masks contain labels {bad}, but data.num_classes={num_classes} allows 0..{num_classes - 1}"
                + (f" (and data.ignore_index={ignore_index})" if ignore_index is not None else "")
                + ": fix data.num_classes / data.ignore_index, or the masks."
            )

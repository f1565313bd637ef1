"""TFRecord files of `tf.train.Example`s (`data=tfrecord`), found by glob and decoded in the tf.data graph.

The schema of the U-Net-on-COCO design notes: features `imageContent` and `maskContent`, the raw uint8 bytes
of the image (H * W * 3, RGB, row-major) and of its label mask (H * W), and `height`, `width` as int64.  The
key names are arguments (`image_key`, `mask_key`, `height_key`, `width_key`), and so is how the bytes are
written: `encoding` (image) and `mask_encoding`: `raw`, `png`, `jpeg` (decoded, masks to their labels as
`mask_labels` says; height and width are then not needed) or `auto` (PNG or JPEG bytes decoded, anything else read
raw).  `compression`:
none, GZIP or ZLIB.

The splits are globs relative to `path` (or absolute): `train`, `val` and `test`.  When `val` matches no file,
validation is a seeded `val_fraction` of the training records: a record goes there when its bytes, hashed with
the seed (tf.strings.to_hash_bucket_strong), fall in that fraction, so the split does not depend on how the
records are sharded or read; it holds about, not exactly, that fraction.  Likewise `test_fraction` (0: none) when
`test` matches no file: the next share of the hash's range.

Before training, the first record of every file is read: a file that is not TFRecords (e.g. GZIP without
`compression: GZIP`) or whose first record lacks a configured feature is refused naming the file and the key.
A later record that lacks one stops the pipeline with the same kind of line (an in-graph check).
"""

# Lazy imports: TensorFlow loads when the splits are built, not when the config is checked (this module is imported then).

from __future__ import annotations

import glob
import io
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.config.check import require
from seglab.data import LABEL_ERROR_MARKER, DataError, Provenance, Splits

log = logging.getLogger(__name__)

ENCODINGS = ("raw", "png", "jpeg", "auto")
COMPRESSIONS = {None: "", "none": "", "gzip": "GZIP", "zlib": "ZLIB"}  # data.source.compression -> TFRecordDataset's
GZIP_MAGIC = b"\x1f\x8b"
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG", b"\xff\xd8\xff"
PNG_DEPTH_AT = 24  # IHDR's bit depth byte, the colour type after it
FILES_AT_ONCE = 4  # files read in parallel, interleaved one record each: a fixed number, so the order is the same everywhere
HASH_BUCKETS = 1 << 30  # resolution of the seeded validation fraction
RECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".record", ".records", ".tfrec")
SPLIT_WORDS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def build(
    path: str | None = None,
    train: str = "train*.tfrecord*",
    val: str | None = "val*.tfrecord*",
    test: str | None = "test*.tfrecord*",
    image_key: str = "imageContent",
    mask_key: str = "maskContent",
    height_key: str | None = "height",
    width_key: str | None = "width",
    encoding: str = "raw",
    mask_encoding: str = "raw",
    compression: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    deterministic: bool = True,
) -> Splits:
    """The `data=tfrecord` source: train, validation and (when its glob matches) test splits."""
    root = Path(str(path)).expanduser()
    spec = Spec(image_key, mask_key, height_key, width_key, encoding, mask_encoding, COMPRESSIONS[_lower(compression)])
    files = {"train": matching(root, train, "train", required=True)}
    for split, pattern in (("val", val), ("test", test)):
        found = matching(root, pattern, split, required=False)
        if found:
            files[split] = found
    for found in files.values():
        check_first_records(found, spec)
    if "val" not in files:
        why = f"no file matches data.source.val={val} in {root}" if val else "data.source.val=null"
        log.warning("%s: validation is a seeded %s of the training records", why, val_fraction)
    # Carved from the training records by their seeded hash: validation [0, val_fraction), then test.
    ranges = carved({split: fraction for split, fraction in (("val", val_fraction), ("test", test_fraction))
                     if split not in files and fraction > 0})
    datasets, about = {}, {}
    for split, found in files.items():
        part = seeded_part(ranges["train"], seed) if split == "train" and len(ranges) > 1 else None
        datasets[split] = read(found, spec, deterministic, part)
        about[split] = Provenance({"kind": "tfrecord", "path": str(root), "split": split, "files": len(found)}, files=found)
    for split, (low, high) in ranges.items():
        if split != "train":
            datasets[split] = read(files["train"], spec, deterministic, seeded_part((low, high), seed))
            share = f"below {high}" if not low else f"from {low} below {high}"
            about[split] = Provenance({**about["train"].source, "split": split}, files=files["train"],
                                      selection=f"{split}: records hashed with seed {seed} {share}")
    if len(ranges) > 1:
        about["train"].selection = f"train: records hashed with seed {seed} from {ranges['train'][0]} up"
    log.info("tfrecord from %s: %s", root, ", ".join(f"{len(found)} {split} files" for split, found in files.items()))
    return Splits(train=datasets["train"], val=datasets["val"], test=datasets.get("test"), about=about)


@dataclass
class Spec:
    """How an Example holds an image and its mask."""

    image_key: str
    mask_key: str
    height_key: str | None
    width_key: str | None
    encoding: str
    mask_encoding: str
    compression: str  # TFRecordDataset's compression_type: "", GZIP or ZLIB

    def features(self) -> dict[str, tuple[str, str]]:
        """feature name -> (its data.source key, the Example list kind it must be)."""
        found = {self.image_key: ("image_key", "bytes_list"), self.mask_key: ("mask_key", "bytes_list")}
        for key, name in ((self.height_key, "height_key"), (self.width_key, "width_key")):
            if key is not None:
                found[key] = (name, "int64_list")
        return found


def matching(root: Path, pattern: str | None, split: str, required: bool) -> list[str]:
    """The files a split's glob matches, sorted; none for a train glob is a DataError naming the glob."""
    found = sorted(p for p in glob.glob(str(root / pattern), recursive=True) if Path(p).is_file()) if pattern else []
    if required and not found:
        raise DataError(f"no file matches data.source.{split}={pattern} in data.source.path={root}: set "
                        f"data.source.path to the folder of the TFRecord files, or data.source.{split} to a glob that matches them.")
    return found


def check_first_records(files: list[str], spec: Spec) -> None:
    """Read each file's first record: a file that is not TFRecords, or a missing feature, is one line naming the file."""
    import tensorflow as tf  # seconds to import; the config check imports this module without it

    for file in files:
        try:
            first = list(tf.data.TFRecordDataset(file, compression_type=spec.compression).take(1).as_numpy_iterator())
        except tf.errors.OpError:
            raise DataError(f"{file}: cannot be read as TFRecords{_compression_hint(file, spec.compression)}.") from None
        if not spec.compression:  # TFRecords (the first record read): the rest whole too
            check_framing(file)
        if not first:
            log.warning("%s holds no record", file)
            continue
        try:
            features = tf.train.Example.FromString(first[0]).features.feature
        except Exception as err:  # protobuf's DecodeError, which TensorFlow does not export
            raise DataError(f"{file}: its first record is not a tf.train.Example ({err}).") from None
        for name, (key, kind) in spec.features().items():
            if name not in features:
                raise DataError(f"{file}: its first record has no feature {name!r} (data.source.{key}); its features are "
                                f"{', '.join(sorted(features))}: set data.source.{key} to the one that holds it.")
            if features[name].WhichOneof("kind") != kind:
                raise DataError(f"{file}: feature {name!r} (data.source.{key}) is a {features[name].WhichOneof('kind')}, "
                                f"not a {kind}: name the feature that holds it.")


def check_framing(file: str) -> None:
    """An uncompressed file's records whole: each a length (8 bytes, then its 4-byte CRC), the data, the data's CRC.
    A file cut short (a write or copy interrupted) is one line naming it and the record, before any run opens,
    where TensorFlow would stop mid-epoch with "truncated record" and no file; only the headers are read."""
    size, at, record = os.path.getsize(file), 0, 0
    with open(file, "rb") as f:
        while at < size:
            header = f.read(12)
            end = at + 12 + (struct.unpack("<Q", header[:8])[0] + 4 if len(header) == 12 else 0)
            if len(header) < 12 or end > size:
                raise DataError(f"{file}: record {record + 1} (at byte {at}) is cut short, the file ends at byte {size}: "
                                "the file is incomplete (a write or copy interrupted): write or copy it again.")
            at, record = end, record + 1
            f.seek(at)


def _compression_hint(file: str, compression: str) -> str:
    with open(file, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    if gzipped and compression != "GZIP":
        return ": it is GZIP-compressed: set data.source.compression=GZIP"
    if compression and not gzipped:
        return f" with data.source.compression={compression}: if the file is not compressed, set data.source.compression=none"
    return ": write it with tf.io.TFRecordWriter"


def read(files: list[str], spec: Spec, deterministic: bool, part=None):
    """The files' records (those `part` keeps), interleaved in a fixed order, decoded in parallel:
    (uint8 (H, W, 3), int32 (H, W))."""
    import tensorflow as tf  # seconds to import; the config check imports this module without it

    def records(file):
        return tf.data.TFRecordDataset(file, compression_type=spec.compression).map(lambda record: (file, record))

    named = tf.data.Dataset.from_tensor_slices(files).interleave(
        records, cycle_length=min(len(files), FILES_AT_ONCE), block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,  # the seeded validation split and the examples' order follow it
    )
    if part is not None:
        named = named.filter(part)
    return named.map(lambda file, record: decode(file, record, spec), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=deterministic)


def decode(file, record, spec: Spec):
    """One Example -> (image, mask); a record without a feature, or with raw bytes that do not fit its height and
    width, stops the pipeline with a line naming the feature and the file."""
    import tensorflow as tf  # seconds to import; the config check imports this module without it

    features = {spec.image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
                spec.mask_key: tf.io.FixedLenFeature([], tf.string, default_value="")}
    for key in (spec.height_key, spec.width_key):
        if key is not None:
            features[key] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
    example = tf.io.parse_single_example(record, features)
    checks = [(tf.strings.length(example[key]) > 0, f"a record has no feature {key}") for key in (spec.image_key, spec.mask_key)]
    size = None
    if spec.height_key is not None and spec.width_key is not None:
        size = tf.cast(example[spec.height_key], tf.int32), tf.cast(example[spec.width_key], tf.int32)
        checks.append((tf.reduce_all(tf.stack(size) > 0), f"a record has no positive {spec.height_key} and {spec.width_key}"))
    with tf.control_dependencies([_assert(ok, message, file) for ok, message in checks]):
        image = pixels(example[spec.image_key], size, 3, spec.encoding, spec.image_key, file)
        mask = pixels(example[spec.mask_key], size, 1, spec.mask_encoding, spec.mask_key, file,
                      lambda content: mask_labels(content, spec.mask_key, file))
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(mask)[:2]))
    with tf.control_dependencies([_assert(same, f"the {spec.mask_key} of a record is not the size of its {spec.image_key}", file)]):
        return tf.identity(image), tf.cast(mask[..., 0], tf.int32)


def mask_labels(content, key: str, file):
    """Encoded mask bytes -> int32 labels (H, W, 1), as data=folder reads mask files: a grey PNG's values at any bit
    depth (TensorFlow's decode_image would scale 16 bits down to 8, and 1 bit up to 0/255; its alpha, if any, dropped),
    a palette PNG's indices (TensorFlow gives its colours; read with Pillow), a JPEG's grey values; a colour PNG stops
    the pipeline with a line naming the file."""
    import tensorflow as tf  # seconds to import; the config check imports this module without it

    header = tf.io.decode_raw(tf.strings.substr(content, PNG_DEPTH_AT, 2), tf.uint8)  # IHDR: bit depth, colour type
    png = tf.strings.substr(content, 0, len(PNG_MAGIC)) == PNG_MAGIC

    def grey():
        return tf.cond(header[0] == 16, lambda: tf.cast(tf.io.decode_png(content, 1, tf.uint16), tf.int32),
                       lambda: tf.cast(tf.io.decode_png(content, 1), tf.int32))

    def indices():
        labels = tf.numpy_function(lambda data: np.asarray(Image.open(io.BytesIO(data)), np.int32)[..., None], [content],
                                   tf.int32)
        return tf.ensure_shape(labels, [None, None, 1])

    def colour():
        message = (f"the {key} of a record is a colour PNG, not labels: store the class of each pixel as a grey or palette PNG "
                   "(or raw bytes); for colour-coded masks with a colour table use data=folder")
        with tf.control_dependencies([_assert(False, message, file)]):
            return tf.zeros([0, 0, 1], tf.int32)

    def jpeg():
        return tf.cast(tf.io.decode_image(content, channels=1, expand_animations=False), tf.int32)

    JPEG, GREY, PILLOW, COLOUR = range(4)  # the branches, in switch_case's order
    # Each PNG colour type's branch (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA; 1 and 5 are no type): Pillow
    # where TensorFlow would not give the values, palette indices and 1-, 2- or 4-bit grey (which it scales).
    by_type = tf.gather([GREY, COLOUR, COLOUR, PILLOW, GREY, COLOUR, COLOUR], tf.minimum(tf.cast(header[1], tf.int32), 6))
    branch = tf.where(~png, JPEG, tf.where((by_type == GREY) & (header[0] < 8), PILLOW, by_type))
    return tf.switch_case(branch, [jpeg, grey, indices, colour])


def pixels(content, size, channels: int, encoding: str, key: str, file, decode_encoded=None):
    """Raw uint8 bytes (row-major, `size` = (height, width)) or encoded PNG/JPEG -> uint8 (H, W, channels) (or what
    `decode_encoded` makes of encoded bytes: a mask's labels)."""
    import tensorflow as tf  # seconds to import; the config check imports this module without it

    dtype = tf.uint8 if decode_encoded is None else tf.int32

    def raw():
        if size is None:  # encoding auto without height and width: raw bytes cannot be shaped
            with tf.control_dependencies([_assert(False, f"the {key} of a record is neither PNG nor JPEG, and raw bytes "
                                                         "need data.source.height_key and width_key", file)]):
                return tf.zeros([0, 0, channels], dtype)
        values = tf.io.decode_raw(content, tf.uint8)
        fits = tf.equal(tf.size(values), size[0] * size[1] * channels)
        message = f"the {key} of a record does not hold height x width x {channels} raw bytes"
        with tf.control_dependencies([_assert(fits, message, file)]):
            return tf.cast(tf.reshape(values, tf.stack([size[0], size[1], channels])), dtype)

    def decoded():
        if decode_encoded is not None:  # a mask's int32 labels: raw bytes are cast to that dtype too (raw, above)
            return decode_encoded(content)
        return tf.io.decode_image(content, channels=channels, expand_animations=False)
    if encoding == "raw":
        return raw()
    if encoding in ("png", "jpeg"):
        return decoded()
    encoded = (tf.strings.substr(content, 0, len(PNG_MAGIC)) == PNG_MAGIC) | (
        tf.strings.substr(content, 0, len(JPEG_MAGIC)) == JPEG_MAGIC)
    return tf.cond(encoded, decoded, raw)


def _assert(ok, message: str, file):
    import tensorflow as tf  # seconds to import; the config check imports this module without it

    # The marker and "file:" let seglab.errors print what TensorFlow raises mid-epoch as one line.
    return tf.debugging.Assert(ok, [f"{LABEL_ERROR_MARKER} {message}", "file:", file])


def carved(fractions: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Each carved split's share [low, high) of the hash's range, one after the other in the order given (validation
    first: its records stay those of the same seed whatever the test fraction); train the rest, to 1."""
    ranges, low = {}, 0.0
    for split, fraction in fractions.items():
        ranges[split], low = (low, low + fraction), low + fraction
    return {"train": (low, 1.0), **ranges}


def seeded_part(share: tuple[float, float], seed: int):
    """A filter of `(file, record)` keeping the records whose bytes, hashed with the seed, fall in `share` [low, high)
    of the hash's range."""
    import tensorflow as tf  # seconds to import; the config check imports this module without it

    low, high = (int(bound * HASH_BUCKETS) for bound in share)

    def chosen(file, record):
        bucket = tf.strings.to_hash_bucket_strong(record, HASH_BUCKETS, key=[seed, 0])
        return (bucket >= low) & (bucket < high) if high < HASH_BUCKETS else bucket >= low

    return chosen


def check(path: str | None = None, encoding: str = "raw", mask_encoding: str = "raw", compression: str | None = None,
          val_fraction: float = 0.1, test_fraction: float = 0.0, height_key: str | None = "height",
          width_key: str | None = "width", **_) -> None:
    require(bool(path), "data.source.path", path, "set data.source.path=DIR, the folder of the TFRecord files "
            "(data.source.train, val and test are globs in it)")
    for key, value in (("encoding", encoding), ("mask_encoding", mask_encoding)):
        require(value in ENCODINGS, f"data.source.{key}", value, f"choose one of {', '.join(ENCODINGS)}")
    raw = [key for key, value in (("encoding", encoding), ("mask_encoding", mask_encoding)) if value == "raw"]
    for key, value in (("height_key", height_key), ("width_key", width_key)):
        require(value is not None or not raw, f"data.source.{key}", value,
                f"raw bytes (data.source.{raw[0] if raw else ''}=raw) need the feature that holds the size; "
                "or set the encoding png, jpeg or auto")
    require(_lower(compression) in COMPRESSIONS, "data.source.compression", compression, "use none, GZIP or ZLIB")
    require(0.0 < val_fraction < 1.0, "data.source.val_fraction", val_fraction,
            "use a fraction in (0, 1) (used when the val glob matches no file)")
    require(0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0, "data.source.test_fraction", test_fraction,
            "use a fraction in [0, 1), less than 1 with val_fraction (used when the test glob matches no file)")


def _lower(value):
    return value.lower() if isinstance(value, str) else value


def find(path: Path) -> dict | None:
    """The data.source arguments that read PATH, a folder of TFRecord files (split by `train`, `val`, `test` in their
    names, else all training), from the file names and the first file's first record; None if it holds none."""
    import tensorflow as tf  # seconds to import; `python -m seglab.data inspect` asks every source, most need no TensorFlow

    path = Path(path)
    files = sorted(p for p in path.glob("*") if p.is_file() and _record_suffix(p)) if path.is_dir() else []
    if not files:
        return None
    found = {"path": str(path), "train": None, "val": None, "test": None}
    for split, words in SPLIT_WORDS.items():
        for word in words[::-1]:  # the longest word first: "validation" before "val"
            named = [p for p in files if p.name.lower().startswith(word)]
            if named and found[split] is None:
                found[split] = f"{named[0].name[:len(word)]}*{_record_suffix(named[0])}*"
    if found["train"] is None:
        found["train"] = f"*{_record_suffix(files[0])}*"
    with open(files[0], "rb") as f:
        found["compression"] = "GZIP" if f.read(2) == GZIP_MAGIC else "none"
    try:
        (first,) = tf.data.TFRecordDataset(str(files[0]), compression_type=COMPRESSIONS[found["compression"].lower()]).take(1)
        features = tf.train.Example.FromString(first.numpy()).features.feature
    except (tf.errors.OpError, ValueError):
        return found  # build names what is wrong with the file
    return {**found, **_guess_keys(features)}


def _record_suffix(file: Path) -> str | None:
    """.tfrecord of train.tfrecord, train.tfrecord-00001-of-00004 or train.tfrecord.gz; None for other files."""
    return next((known for s in file.suffixes for known in RECORD_SUFFIXES if s.startswith(known)), None)


def _guess_keys(features) -> dict:
    """The notes' key names when the record has them, else the bytes and int64 features whose names say image, mask,
    height and width; the encodings from the image and mask bytes' first bytes."""
    kinds = {name: feature.WhichOneof("kind") for name, feature in features.items()}
    guesses = {}
    for key, default, kind, words in (("image_key", "imageContent", "bytes_list", ("image", "img")),
                                      ("mask_key", "maskContent", "bytes_list", ("mask", "seg", "label", "annot")),
                                      ("height_key", "height", "int64_list", ("height",)),
                                      ("width_key", "width", "int64_list", ("width",))):
        named = [n for n in sorted(kinds) if kinds[n] == kind and any(w in n.lower() for w in words)]
        guesses[key] = default if kinds.get(default) == kind else (named[0] if named else default)
    for key, encoding_key in (("image_key", "encoding"), ("mask_key", "mask_encoding")):
        content = features[guesses[key]].bytes_list.value[0] if guesses[key] in kinds else b""
        guesses[encoding_key] = "png" if content.startswith(PNG_MAGIC) else "jpeg" if content.startswith(JPEG_MAGIC) else "raw"
    for key in ("height_key", "width_key"):
        if kinds.get(guesses[key]) != "int64_list" and guesses["encoding"] != "raw" and guesses["mask_encoding"] != "raw":
            guesses[key] = None  # encoded images carry their size
    return guesses

"""NumPy arrays of images and masks (`data=arrays`), read one example at a time from memory-mapped files.

The layout of the FCN design notes: in `data.source.path`, `images_training.npy` (N, H, W, 3) uint8 and
`seg_training.npy` (N, H, W, C) one-hot, and likewise `images_validation.npy` / `seg_validation.npy` and
`images_test.npy` / `seg_test.npy` when present (the file names are arguments with those defaults).

- Images: uint8, or floats in [0, 1] (scaled to uint8 per example: round(x * 255)); (N, H, W, 3), or
  grayscale (N, H, W) / (N, H, W, 1), repeated to RGB.
- Masks: labels (N, H, W) or (N, H, W, 1) of an integer type, or one-hot (N, H, W, C) with C = data.num_classes
  (argmax per pixel; a pixel whose one-hot row is all zero gets ignore_index).
- A file is `NAME.npy`, `NAME.npz` holding one array, or `NAME.npz:KEY` (one member of an .npz with several,
  e.g. `data.npz:x_train`).
- Validation: the validation files when both are present, else a seeded `val_fraction` of the training examples;
  test likewise: its files, else a seeded `test_fraction` of them (0: no test split).

Nothing is read whole.  A `.npy` file is memory-mapped (`np.load(..., mmap_mode="r")`), and so is an .npz member
stored uncompressed (`np.savez`: the member's bytes lie in the zip file as they are).  A compressed member
(`np.savez_compressed`) cannot be mapped: it is decompressed as a stream, one example after the other, in
index order (each split's examples are read in increasing index order; the pipeline shuffles after).
"""

# Lazy imports: TensorFlow loads when the splits are built, not when the config is checked (this module is imported then).

from __future__ import annotations

import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from seglab.config import sources
from seglab.config.check import require
from seglab.data import LABEL_ERROR_MARKER, SCAN_CLASSES, DataError, Provenance, Splits, carve

log = logging.getLogger(__name__)

SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}  # the notes' file names: images_<word>.npy
ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local file header, before its name and extra field
ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"


@dataclass
class Array:
    """One array in a `.npy` file or an `.npz` member, read one element (first axis) at a time."""

    file: Path
    member: str | None  # the .npz member (its name without .npy); None for a .npy file
    shape: tuple
    dtype: np.dtype
    fortran_order: bool
    offset: int  # where its data starts: in the file (mapped) or in the member (compressed)
    compressed: bool

    @property
    def label(self) -> str:
        return str(self.file) if self.member is None else f"{self.file}:{self.member}"

    def elements(self, indices: list[int]) -> Iterator[np.ndarray]:
        """The elements at `indices` (increasing: a compressed member is decompressed once, forward)."""
        if not self.compressed:
            if self.member is None:
                data = np.load(self.file, mmap_mode="r")
            else:
                data = np.memmap(self.file, self.dtype, "r", self.offset, self.shape, "F" if self.fortran_order else "C")
            for i in indices:
                yield np.array(data[i])
            return
        step = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.file) as archive, archive.open(self.member + ".npy") as member:
            for i in indices:
                member.seek(self.offset + i * step)  # forward: decompresses only what lies between
                yield np.frombuffer(member.read(step), self.dtype).reshape(self.shape[1:])


def file_of(spec: str) -> str:
    """The file a data.source value names: data.npz of data.npz:x_train."""
    name, npz, _ = spec.partition(".npz:")
    return name + ".npz" if npz else spec


def open_array(root: Path, spec: str, key: str) -> Array:
    """The array that `spec` (a data.source key's value: FILE.npy, FILE.npz or FILE.npz:MEMBER) names under `root`,
    from its header alone."""
    file, member = root / file_of(spec), spec.partition(".npz:")[2]
    if not file.is_file():
        raise DataError(f"data.source.{key}={spec}: {file} does not exist: set data.source.path to the folder that "
                        f"holds it, or data.source.{key} to the file's name.")
    if file.suffix == ".npz":
        return _npz_member(file, member or None, key)
    try:
        data = np.load(file, mmap_mode="r")
    except ValueError as err:  # not an .npy file, or Python objects (which cannot be mapped)
        raise DataError(f"{file}: cannot be memory-mapped as a NumPy array ({err}): save it with np.save "
                        "as a numeric array.") from None
    fortran = bool(data.flags.f_contiguous and not data.flags.c_contiguous)
    return Array(file, None, tuple(data.shape), data.dtype, fortran, int(data.offset), compressed=False)


def _npz_member(file: Path, member: str | None, key: str) -> Array:
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile:
        raise DataError(f"{file}: not an .npz file (not a zip archive): save it with np.savez.") from None
    with archive:
        members = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        if member is None and len(members) != 1:
            raise DataError(f"data.source.{key}={file.name}: the file holds {len(members)} arrays ({', '.join(members)}): "
                            f"name one, e.g. data.source.{key}={file.name}:{(members or ['KEY'])[0]}.")
        member = member or members[0]
        if member not in members:
            raise DataError(f"data.source.{key}: {file} has no array {member!r}; it holds {', '.join(members)}.")
        info = archive.getinfo(member + ".npy")
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(stream)
            header_bytes = stream.tell()
    if dtype.hasobject:
        raise DataError(f"{file}:{member} holds Python objects: save a numeric array.")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(file, "rb") as raw:  # the member's bytes start after its local header, name and extra field
            raw.seek(info.header_offset)
            fields = ZIP_LOCAL_HEADER.unpack(raw.read(ZIP_LOCAL_HEADER.size))
        if fields[0] != ZIP_LOCAL_SIGNATURE:
            raise DataError(f"{file}: the zip entry of {member} is damaged: save the arrays again with np.savez.")
        start = info.header_offset + ZIP_LOCAL_HEADER.size + fields[-2] + fields[-1]
        return Array(file, member, tuple(shape), dtype, fortran, start + header_bytes, compressed=False)
    if fortran:
        raise DataError(f"{file}:{member} is compressed and Fortran-ordered, which cannot be read one example at a "
                        "time: save it C-ordered (np.ascontiguousarray) or with np.savez (uncompressed).")
    return Array(file, member, tuple(shape), dtype, fortran, header_bytes, compressed=True)


@dataclass
class Pair:
    """A split's image and mask arrays, checked against each other."""

    images: Array
    masks: Array
    onehot: bool  # masks (N, H, W, C) one-hot, else labels

    @property
    def count(self) -> int:
        return self.images.shape[0]


def open_pair(root: Path, image_spec: str, mask_spec: str, keys: tuple[str, str], num_classes: int) -> Pair:
    """The two arrays, refused with one line naming the file when their dtype, rank or sizes do not fit."""
    images, masks = open_array(root, image_spec, keys[0]), open_array(root, mask_spec, keys[1])
    shape, kind = images.shape, images.dtype.kind
    if not (kind == "f" or images.dtype == np.uint8):
        raise DataError(f"{images.label}: images of dtype {images.dtype}: save uint8 (0..255) or floats in [0, 1].")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))):
        raise DataError(f"{images.label}: images of shape {shape}: save (N, H, W, 3) RGB, or (N, H, W) / (N, H, W, 1) grayscale.")
    if masks.dtype.kind not in "iubf" or len(masks.shape) not in (3, 4):
        raise DataError(f"{masks.label}: masks of shape {masks.shape} and dtype {masks.dtype}: save labels (N, H, W) of "
                        "an integer type, or one-hot (N, H, W, C).")
    onehot = len(masks.shape) == 4 and masks.shape[3] > 1
    if not onehot and masks.dtype.kind == "f":
        raise DataError(f"{masks.label}: label masks of dtype {masks.dtype}: save integer labels, e.g. masks.astype(np.uint8).")
    if onehot and masks.shape[3] != num_classes and num_classes != SCAN_CLASSES:
        raise DataError(f"{masks.label}: one-hot masks with {masks.shape[3]} classes (shape {masks.shape}), but "
                        f"data.num_classes={num_classes}: set data.num_classes={masks.shape[3]} (with as many data.class_names).")
    if masks.shape[0] != shape[0]:
        raise DataError(f"{images.label} holds {shape[0]} images but {masks.label} {masks.shape[0]} masks: "
                        "give each image its mask, in the same order.")
    if masks.shape[1:3] != shape[1:3]:
        raise DataError(f"{images.label}: images of {shape[1]}x{shape[2]} px, but the masks in {masks.label} are "
                        f"{masks.shape[1]}x{masks.shape[2]}: save each mask at its image's size.")
    if shape[0] == 0:
        raise DataError(f"{images.label} holds no image.")
    return Pair(images, masks, onehot)


def to_image(raw: np.ndarray, where: str) -> np.ndarray:
    """One stored image -> uint8 (H, W, 3); floats in [0, 1] scaled to 0..255 (a value outside stops the pipeline)."""
    if raw.dtype.kind == "f":
        low, high = float(np.min(raw)), float(np.max(raw))
        if not (0.0 <= low and high <= 1.0):  # NaN fails this too
            raise DataError(f"[{LABEL_ERROR_MARKER} {where}: float image values span {low:g} to {high:g}, outside 0..1: "
                            "scale the images to 0..1, or save them as uint8 0..255]")
        raw = np.rint(raw * 255.0).astype(np.uint8)
    if raw.ndim == 2:
        raw = raw[..., None]
    return np.repeat(raw, 3, axis=-1) if raw.shape[-1] == 1 else raw


def to_labels(raw: np.ndarray, onehot: bool, ignore_index: int | None, where: str) -> np.ndarray:
    """One stored mask -> int32 labels (H, W): one-hot by argmax, an all-zero one-hot row -> ignore_index."""
    if not onehot:
        return raw.reshape(raw.shape[:2]).astype(np.int32)
    labels = np.argmax(raw, axis=-1).astype(np.int32)
    empty = ~np.any(raw, axis=-1)
    if empty.any():
        if ignore_index is None:
            raise DataError(f"[{LABEL_ERROR_MARKER} {where}: {int(empty.sum())} pixels have an all-zero one-hot row "
                            "(no class): set data.ignore_index, e.g. 255, to leave them out]")
        labels[empty] = ignore_index
    return labels


def stream(pair: Pair, indices: list[int], ignore_index: int | None):
    """The examples at `indices` (increasing) as a tf.data.Dataset, read one at a time by a Python generator."""
    import tensorflow as tf  # seconds to import; the config check imports this module without it

    height, width = pair.images.shape[1:3]

    def examples():
        masks = pair.masks.elements(indices)
        for i, image in zip(indices, pair.images.elements(indices)):
            mask = next(masks)
            yield (to_image(image, f"{pair.images.label}, image {i}"),
                   to_labels(mask, pair.onehot, ignore_index, f"{pair.masks.label}, mask {i}"))

    signature = (tf.TensorSpec((height, width, 3), tf.uint8), tf.TensorSpec((height, width), tf.int32))
    dataset = tf.data.Dataset.from_generator(examples, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(len(indices)))


def build(
    path: str | None = None,
    images: str = "images_training.npy",
    masks: str = "seg_training.npy",
    val_images: str | None = "images_validation.npy",
    val_masks: str | None = "seg_validation.npy",
    test_images: str | None = "images_test.npy",
    test_masks: str | None = "seg_test.npy",
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    num_classes: int = 2,
    ignore_index: int | None = 255,
) -> Splits:
    """The `data=arrays` source: train, validation and (when its files are there) test splits."""
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise DataError(f"data.source.path={path}: not a directory: give the folder that holds {images} and {masks}.")
    pairs = {"train": open_pair(root, images, masks, ("images", "masks"), num_classes)}
    for split, image_spec, mask_spec in (("val", val_images, val_masks), ("test", test_images, test_masks)):
        pair = optional_pair(root, split, image_spec, mask_spec, num_classes)
        if pair is not None:
            pairs[split] = pair
    chosen = {split: list(range(pair.count)) for split, pair in pairs.items()}
    fractions = {split: fraction for split, fraction in (("val", val_fraction), ("test", test_fraction))
                 if split not in pairs and (fraction > 0 or split == "val")}
    selection = {}
    if fractions:
        chosen.update(split_off(pairs["train"], fractions, seed, val_images))
        pairs.update({split: pairs["train"] for split in fractions})
        selection = {split: f"{split}: a seeded {'/'.join(map(str, fractions.values()))} of {pairs['train'].count} (seed {seed})"
                     for split in ("train", *fractions)}
    about = {split: Provenance(
        {"kind": "arrays", "path": str(root), "images": pair.images.label, "masks": pair.masks.label, "split": split},
        files=sorted({str(pair.images.file), str(pair.masks.file)}),
        names=[f"{Path(pair.images.label).name}[{i}]" for i in chosen[split]], selection=selection.get(split, ""),
    ) for split, pair in pairs.items()}
    log.info("arrays from %s: %s", root, ", ".join(f"{len(chosen[s])} {s}" for s in pairs))
    datasets = {split: stream(pair, chosen[split], ignore_index) for split, pair in pairs.items()}
    return Splits(train=datasets["train"], val=datasets["val"], test=datasets.get("test"), about=about)


def optional_pair(root: Path, split: str, image_spec: str | None, mask_spec: str | None, num_classes: int) -> Pair | None:
    """A validation or test pair: both files there, or neither (then None); one without the other is refused."""
    keys = (f"{split}_images", f"{split}_masks")
    present = [spec is not None and (root / file_of(spec)).is_file() for spec in (image_spec, mask_spec)]
    if not any(present):
        return None
    if not all(present):
        have, lack = (keys[0], keys[1]) if present[0] else (keys[1], keys[0])
        spec = mask_spec if present[0] else image_spec
        raise DataError(f"data.source.{have} is in {root} but data.source.{lack}={spec} is not: add that file, or set "
                        f"data.source.{have}=null to go without a {split} split.")
    return open_pair(root, image_spec, mask_spec, keys, num_classes)


def split_off(train: Pair, fractions: dict[str, float], seed: int, val_file: str | None) -> dict[str, list[int]]:
    """Seeded `fractions` of the training examples ({"val": 0.1} and/or {"test": 0.2}) as those splits: each split's
    indices, increasing, cut as seglab.data.carve cuts them."""
    if fractions.get("val", 1) <= 0:
        raise DataError(f"no validation data: {val_file} is not in the folder and data.source.val_fraction=0: add the "
                        "validation files, or set data.source.val_fraction, e.g. 0.1.")
    parts = carve(train.count, fractions, seed)
    if not parts["train"]:
        raise DataError(f"{train.images.label}: {train.count} images are too few to split off "
                        f"{' and '.join(f'a {split} fraction of {f}' for split, f in fractions.items())}: add images, or "
                        f"give the split its own files.")
    return parts


def check(path: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.0, images: str = "", masks: str = "",
          **_) -> None:
    require(bool(path), "data.source.path", path,
            "set data.source.path=DIR, the folder with images_training.npy and seg_training.npy (data.source.images, "
            "data.source.masks name other files)")
    require(0.0 <= val_fraction < 1.0, "data.source.val_fraction", val_fraction,
            "use a fraction in [0, 1) (used when there are no validation files)")
    require(0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0, "data.source.test_fraction", test_fraction,
            "use a fraction in [0, 1), less than 1 with val_fraction (used when there are no test files)")
    for key, value in (("images", images), ("masks", masks)):
        require(file_of(str(value)).endswith((".npy", ".npz")), f"data.source.{key}", value,
                "name a .npy or .npz file (FILE.npz:KEY for one array of several)")


def class_names(path: str | None = None, masks: str | None = None, **_) -> list[str] | None:
    """class_0 .. class_<C-1> for one-hot training masks (N, H, W, C), read from the file's header, else None (label
    masks name no count; arguments of the wrong kind are left to `check`): what inspect prints for the notes' layout."""
    if not isinstance(path, (str, Path)) or not isinstance(masks, str) or not file_of(masks).endswith((".npy", ".npz")):
        return None
    try:
        shape = open_array(Path(path).expanduser(), masks, "masks").shape
    except (DataError, OSError):
        return None
    return sources.placeholder_names(shape[3]) if len(shape) == 4 and shape[3] > 1 else None


def find(path: Path) -> dict | None:
    """The data.source arguments that read PATH, a folder with images_training.npy and seg_training.npy (or the same
    as .npz), with the validation and test files when present; None if PATH is not laid out so."""
    path = Path(path)
    if not path.is_dir():
        return None
    for ext in (".npy", ".npz"):
        files = {split: (f"images_{word}{ext}", f"seg_{word}{ext}") for split, word in SPLIT_WORDS.items()}
        if all((path / name).is_file() for name in files["train"]):
            found = {"path": str(path), "images": files["train"][0], "masks": files["train"][1]}
            for split in ("val", "test"):
                there = all((path / name).is_file() for name in files[split])
                found[f"{split}_images"], found[f"{split}_masks"] = files[split] if there else (None, None)
            return found
    return None

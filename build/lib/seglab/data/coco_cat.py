"""COCO 2017 cat masks (Lin et al., ECCV 2014): binary segmentation, 0 background / 1 cat.

For each split, the images holding an instance of `category` (its id looked up by name) are
selected with pycocotools; the mask is the union of the non-crowd instance masks (polygons and
RLE alike, `COCO.annToMask`), and crowd regions not covered by such an instance get
`ignore_index` (with `ignore_index: null` they count as cat).  Optionally a share of cat-free
images (`negative_fraction`, picked with `seed`) is added as negatives.

The conversion runs once per setting and writes sharded TFRecords (the JPEG bytes as they are,
the mask as PNG) under `cache_dir/<key>/`, the key a hash of every setting that changes the
records.  Each shard is written under a temporary name and renamed when complete, and a split's
manifest is written last, so an interrupted conversion leaves nothing a later run would trust;
that run converts the missing shards.  Reading is a parallel `TFRecordDataset` pipeline.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from tqdm import tqdm

from seglab.data import DataError, Provenance, Splits, check_labels
from seglab.util import atomic

log = logging.getLogger(__name__)

BACKGROUND, CAT = 0, 1
FORMAT_VERSION = 1  # bump when the record layout or the mask rule changes: old caches are then ignored
DOWNLOAD = "https://cocodataset.org/#download (2017 Train/Val images and 2017 Train/Val annotations)"
JPEG_MAGIC = b"\xff\xd8"
JPEG_QUALITY = 95  # only for the rare image that is not a JPEG file already
MAX_NAMED = 5


def build(
    path: str = "data/coco",
    cache_dir: str = "~/.cache/seglab/coco_cat",
    category: str = "cat",
    train_split: str = "train2017",
    val_split: str = "val2017",
    negative_fraction: float = 0.0,
    shards: int = 8,
    seed: int = 0,
    ignore_index: int | None = 255,
    num_classes: int = 2,
    deterministic: bool = True,
) -> Splits:
    """The `data=coco_cat` source: train and validation splits of `(uint8 RGB image, uint8 labels)`."""
    if num_classes != 2:
        raise DataError(
            f"data.num_classes={num_classes} contradicts the coco_cat masks, which have 2 labels (background, "
            f"{category}): use data.num_classes=2."
        )
    root = Path(path).expanduser()
    settings = dict(category=category, negative_fraction=negative_fraction, shards=shards, seed=seed, ignore_index=ignore_index)
    splits, about = {}, {}
    for split in (train_split, val_split):
        files, count = convert(root, split, Path(cache_dir).expanduser(), **settings)
        splits[split] = read(files, count, deterministic)
        # The converted records hold the JPEG bytes and masks: digesting them covers the images and the annotations.
        # Names only for the validation split (what per-image tables show), and only in a deterministic order.
        names = record_file_names(files) if split == val_split and deterministic else None
        about[split] = Provenance({"kind": "coco", "annotations": str(root / "annotations" / f"instances_{split}.json"),
                                   "images": str(root / split), **settings}, files=files, names=names)
    check_labels(splits[train_split], num_classes, ignore_index, f"coco_cat ({root}, {train_split})")
    return Splits(train=splits[train_split], val=splits[val_split], about={"train": about[train_split], "val": about[val_split]})


def _records(files: list[str]):
    """The shards' records in the one order `read` and `record_file_names` share."""

    return tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)


def read(files: list[str], count: int, deterministic: bool):
    """Shards -> `(uint8 image (H, W, 3), uint8 mask (H, W))`, read and decoded in parallel."""

    features = {"image": tf.io.FixedLenFeature([], tf.string), "mask": tf.io.FixedLenFeature([], tf.string)}

    def decode(record):
        example = tf.io.parse_single_example(record, features)
        image = tf.io.decode_jpeg(example["image"], channels=3)
        mask = tf.io.decode_png(example["mask"], channels=1)[..., 0]
        return image, mask

    records = _records(files)
    pairs = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return pairs.apply(tf.data.experimental.assert_cardinality(count))


def record_file_names(files: list[str]) -> list[str]:
    """Each record's COCO 2017 file name (its zero-padded image id, `000000000139.jpg`), in `read`'s
    order; only the id is parsed, no image is decoded."""

    feature = {"image_id": tf.io.FixedLenFeature([], tf.int64)}
    ids = _records(files).map(lambda record: tf.io.parse_single_example(record, feature)["image_id"])
    return [f"{int(i):012d}.jpg" for i in ids.as_numpy_iterator()]


def cache_key(root: Path, split: str, annotations: Path, **settings) -> str:
    """A hash of everything that changes the records: data location and file, and the conversion settings."""
    stat = annotations.stat()
    described = dict(
        format=FORMAT_VERSION, root=str(root.resolve()), split=split,
        annotations=[str(annotations.resolve()), stat.st_size, stat.st_mtime_ns], **settings,
    )
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def convert(
    root: Path, split: str, cache_dir: Path, *, category: str, negative_fraction: float, shards: int, seed: int,
    ignore_index: int | None,
) -> tuple[list[str], int]:
    """Convert one split once; return its shard files and number of examples (reusing a complete cache)."""
    annotations, images_dir = _check_layout(root, split)
    settings = dict(category=category, negative_fraction=negative_fraction, shards=shards, seed=seed, ignore_index=ignore_index)
    out = cache_dir / f"{split}-{cache_key(root, split, annotations, **settings)}"
    manifest = out / f"{split}.json"
    if manifest.is_file():
        done = json.loads(manifest.read_text())
        files = [str(out / name) for name in done["shards"]]
        if all(Path(f).is_file() for f in files):
            log.info("coco_cat %s: reusing %d examples in %s", split, done["count"], out)
            return files, done["count"]


    coco = load_annotations(annotations)
    image_ids = select(coco, category, negative_fraction, seed, where=str(annotations))
    missing = [coco.imgs[i]["file_name"] for i in image_ids if not (images_dir / coco.imgs[i]["file_name"]).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} images listed in {annotations} are missing from {images_dir}, e.g. "
            f"{', '.join(missing[:MAX_NAMED])}: unpack the matching {split}.zip there (from {DOWNLOAD})."
        )

    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(dict(root=str(root), split=split, **settings), indent=1))
    for stale in atomic.leftovers(out):  # left by an interrupted conversion (not by another job still converting)
        stale.unlink(missing_ok=True)
    n_shards = min(shards, len(image_ids))
    names = [f"{split}-{i:05d}-of-{n_shards:05d}.tfrecord" for i in range(n_shards)]
    cat_ids = coco.getCatIds(catNms=[category])
    todo = [i for i, name in enumerate(names) if not (out / name).is_file()]
    skipped: list[str] = []
    with _progress(sum(len(image_ids[i::n_shards]) for i in todo), f"coco_cat {split} -> TFRecords") as bar:
        for i in todo:
            skipped += _write_shard(out / names[i], coco, cat_ids, images_dir, image_ids[i::n_shards], ignore_index, bar)
    if skipped:
        log.warning("coco_cat %s: skipped %d image(s) that cannot be decoded: %s", split, len(skipped), ", ".join(skipped[:MAX_NAMED]))
    # Shards of an earlier, interrupted conversion were written by the same rules: read their counts back.
    count = sum(1 for name in names for _ in tf_record_iterator(out / name))
    if count == 0:
        raise DataError(f"coco_cat {split}: none of the {len(image_ids)} selected images in {images_dir} can be decoded.")
    atomic.write_bytes(manifest, json.dumps(dict(count=count, shards=names)).encode())
    log.info("coco_cat %s: wrote %d examples in %d shards to %s", split, count, n_shards, out)
    return [str(out / name) for name in names], count


def load_annotations(annotations: Path) -> COCO:
    """pycocotools' index of an instances file; a DataError naming the file when it is not one (cut short
    by an interrupted download or unpacking, or another JSON file), instead of a JSONDecodeError without it."""
    again = f"unpack annotations_trainval2017.zip (from {DOWNLOAD}) into {annotations.parent.parent} again"
    try:
        return COCO(str(annotations))
    except json.JSONDecodeError as err:
        raise DataError(f"{annotations} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}): "
                        f"the file is incomplete or damaged; {again}.") from None
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as err:  # JSON, but not COCO's layout
        raise DataError(f"{annotations} is not a COCO instances file ({type(err).__name__}: {err}); {again}.") from None


def tf_record_iterator(path: Path):

    return tf.data.TFRecordDataset(str(path)).as_numpy_iterator()


def select(coco, category: str, negative_fraction: float, seed: int, where: str) -> list[int]:
    """Ids of the images with the category, plus seeded cat-free negatives making up `negative_fraction`."""
    cat_ids = coco.getCatIds(catNms=[category])
    if not cat_ids:
        names = sorted(c["name"] for c in coco.loadCats(coco.getCatIds()))
        raise DataError(f"{where} has no category named {category!r} (it has: {', '.join(names[:20])} ...).")
    positives = sorted(coco.getImgIds(catIds=cat_ids))
    if not positives:
        raise DataError(f"{where}: zero images contain a {category!r}; check data.source.path and the split names.")
    others = sorted(set(coco.getImgIds()) - set(positives))
    wanted = round(len(positives) * negative_fraction / (1.0 - negative_fraction))
    negatives = np.random.default_rng(seed).permutation(others)[:wanted].tolist() if wanted else []
    return sorted(positives + [int(i) for i in negatives])


def mask_for(coco, image_id: int, cat_ids: list[int], ignore_index: int | None) -> np.ndarray:
    """(H, W) uint8: 1 on the union of the non-crowd instances, `ignore_index` on crowd regions outside them."""
    info = coco.imgs[image_id]
    cat = np.zeros((info["height"], info["width"]), bool)
    crowd = np.zeros_like(cat)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=cat_ids, iscrowd=None)):
        target = crowd if ann.get("iscrowd", 0) else cat
        target |= coco.annToMask(ann).astype(bool)
    mask = cat.astype(np.uint8) * CAT
    if ignore_index is None:
        mask[crowd] = CAT
    else:
        mask[crowd & ~cat] = ignore_index
    return mask


def _check_layout(root: Path, split: str) -> tuple[Path, Path]:
    annotations, images_dir = root / "annotations" / f"instances_{split}.json", root / split
    if not root.is_dir():
        raise DataError(f"data.source.path={root} does not exist. Download COCO 2017 from {DOWNLOAD} and unpack it there.")
    if not annotations.is_file():
        raise DataError(f"{annotations} is missing: unpack annotations_trainval2017.zip into {root} (from {DOWNLOAD}).")
    if not images_dir.is_dir() or not any(images_dir.iterdir()):
        raise DataError(f"{images_dir} is missing or empty: unpack {split}.zip into {root} (from {DOWNLOAD}).")
    return annotations, images_dir


def _write_shard(path: Path, coco, cat_ids, images_dir: Path, image_ids: list[int], ignore_index, bar) -> list[str]:
    """Write one shard under a temporary name, renamed when complete; return the images skipped
    because they cannot be decoded (each logged with its file), as the pets folder source does."""

    skipped = []

    def write(temporary: str) -> None:
        with tf.io.TFRecordWriter(temporary) as writer:
            for image_id in image_ids:
                bar.update(1)
                info = coco.imgs[image_id]
                file = images_dir / info["file_name"]
                encoded = _jpeg_bytes(file)
                if isinstance(encoded, str):
                    log.warning("coco_cat: skipping %s: %s", file, encoded)
                    skipped.append(str(file))
                    continue
                png = io.BytesIO()
                Image.fromarray(mask_for(coco, image_id, cat_ids, ignore_index)).save(png, "PNG")
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                    "mask": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png.getvalue()])),
                    "image_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[image_id])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    atomic.write(path, write)  # a shard under its final name is always complete
    return skipped


def _jpeg_bytes(file: Path) -> bytes | str:
    """The file's JPEG bytes (other formats re-encoded), or why it cannot be decoded.  Decoding it
    fully here costs once per conversion; a broken file found by TensorFlow would stop every epoch."""

    encoded = file.read_bytes()
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
            if encoded.startswith(JPEG_MAGIC):
                return encoded
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
            return buffer.getvalue()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"not a readable image ({str(err).splitlines()[0] if str(err) else type(err).__name__})"


def _progress(total: int, description: str):

    return tqdm(total=total, desc=description, unit="img", mininterval=1.0)

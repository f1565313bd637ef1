"""data=coco_cat on a tiny COCO-format data set written here: masks against pycocotools, the
TFRecord cache (reused, never trusting a half-written shard), clear errors, a short training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from seglab.data import DataError
from seglab.data import coco as coco_source
from tests.conftest import dead_pid, run_cli

CAT, DOG = 17, 18  # COCO's ids; seglab must look the cat up by name, so the dog comes first
IGNORE = 255


def polygon(x: int, y: int, w: int, h: int) -> list[list[float]]:
    return [[x, y, x + w, y, x + w // 2, y + h]]  # a triangle


def rle(height: int, width: int, box: tuple[int, int, int, int], compressed: bool) -> dict:
    binary = np.zeros((height, width), np.uint8, order="F")
    x, y, w, h = box
    binary[y : y + h, x : x + w] = 1
    if compressed:
        encoded = mask_utils.encode(np.asfortranarray(binary))
        return {"size": [height, width], "counts": encoded["counts"].decode()}
    flat = binary.ravel(order="F")  # uncompressed RLE: run lengths, column-major, starting with zeros
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": [height, width], "counts": np.diff(np.concatenate([[0], changes])).tolist()}


# Each image has a unique width, which identifies it after the TFRecord round trip.
SPLITS = {
    "train2017": [
        dict(id=1, width=40, height=30, anns=[dict(cat=CAT, segmentation=polygon(5, 5, 20, 18))]),
        dict(id=2, width=41, height=32, anns=[dict(cat=CAT, segmentation=rle(32, 41, (10, 4, 15, 20), compressed=True))]),
        dict(id=3, width=42, height=34, anns=[
            dict(cat=CAT, segmentation=polygon(2, 2, 12, 14)),  # two cats ...
            dict(cat=CAT, segmentation=rle(34, 42, (25, 10, 12, 12), compressed=False)),
            dict(cat=CAT, segmentation=rle(34, 42, (20, 20, 20, 12), compressed=False), iscrowd=1),  # ... and a crowd of cats
            dict(cat=DOG, segmentation=polygon(0, 20, 10, 10)),
        ]),
        dict(id=4, width=43, height=30, anns=[dict(cat=DOG, segmentation=polygon(5, 5, 20, 20))]),  # cat-free
        dict(id=5, width=44, height=30, anns=[]),  # cat-free, no annotation at all
        dict(id=6, width=45, height=30, anns=[]),
    ],
    "val2017": [
        dict(id=11, width=46, height=30, anns=[dict(cat=CAT, segmentation=polygon(8, 3, 20, 20))]),
        dict(id=12, width=47, height=30, anns=[]),
    ],
}


def write_coco(root: Path, splits: dict = SPLITS) -> Path:
    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, images in splits.items():
        (root / split).mkdir()
        doc = {"images": [], "annotations": [], "categories": [{"id": DOG, "name": "dog"}, {"id": CAT, "name": "cat"}]}
        for image in images:
            name = f"{image['id']:012d}.jpg"
            pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name, "JPEG")
            doc["images"].append(dict(id=image["id"], file_name=name, width=image["width"], height=image["height"]))
            for ann in image["anns"]:
                doc["annotations"].append(dict(
                    id=len(doc["annotations"]) + 1, image_id=image["id"], category_id=ann["cat"],
                    segmentation=ann["segmentation"], iscrowd=ann.get("iscrowd", 0), area=1.0, bbox=[0, 0, 1, 1],
                ))
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def expected_masks(root: Path, split: str) -> dict[int, np.ndarray]:
    """Straight from pycocotools: union of cat instances = 1, crowd outside them = IGNORE; by image width."""
    coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
    out = {}
    for image_id, info in coco.imgs.items():
        cat, crowd = np.zeros((info["height"], info["width"]), bool), np.zeros((info["height"], info["width"]), bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=[CAT], iscrowd=None)):
            decoded = mask_utils.decode(coco.annToRLE(ann)).astype(bool)
            if ann["iscrowd"]:
                crowd |= decoded
            else:
                cat |= decoded
        mask = cat.astype(np.uint8)
        mask[crowd & ~cat] = IGNORE
        out[info["width"]] = mask
    return out


def by_width(dataset) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {image.shape[1]: (image, mask) for image, mask in dataset.as_numpy_iterator()}


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path / "coco"), tmp_path / "cache"


def build(root, cache, **kw):
    kw = {"categories": ["cat"], "negative_fraction": 0.0, **kw}  # the data=coco_cat preset
    return coco_source.build(path=str(root), cache_dir=str(cache), shards=2, ignore_index=IGNORE, **kw)


def test_masks_match_pycocotools_pixel_for_pixel(coco):
    root, cache = coco
    splits = build(root, cache)
    train, val = by_width(splits.train), by_width(splits.val)
    assert sorted(train) == [40, 41, 42] and sorted(val) == [46]  # the cat images only
    assert int(splits.train.cardinality()) == 3
    for split, got in (("train2017", train), ("val2017", val)):
        expected = expected_masks(root, split)
        for width, (image, mask) in got.items():
            assert image.dtype == np.uint8 and image.shape == (*mask.shape, 3)
            np.testing.assert_array_equal(mask, expected[width])
    two_cats_and_a_crowd = train[42][1]
    assert {0, 1, IGNORE} == set(np.unique(two_cats_and_a_crowd))


def test_records_keep_the_original_jpeg_bytes_and_a_png_mask(coco):
    import tensorflow as tf

    root, cache = coco
    build(root, cache)
    records = tf.data.TFRecordDataset([str(p) for p in sorted(cache.rglob("train2017-*.tfrecord"))])
    stored = [tf.train.Example.FromString(r.numpy()).features.feature for r in records]
    originals = {(root / "train2017" / f"{i:012d}.jpg").read_bytes() for i in (1, 2, 3)}
    assert {f["image"].bytes_list.value[0] for f in stored} == originals
    assert all(f["mask"].bytes_list.value[0].startswith(b"\x89PNG") for f in stored)


def test_negatives_are_a_seeded_share_of_cat_free_images(coco):
    root, cache = coco
    splits = build(root, cache, negative_fraction=0.4)  # 3 cat images -> 2 negatives make 40 %
    train = by_width(splits.train)
    negatives = [w for w in train if w >= 43]
    assert len(train) == 5 and len(negatives) == 2
    assert all((train[w][1] == 0).all() for w in negatives)
    again = by_width(build(root, cache, negative_fraction=0.4).train)
    assert sorted(again) == sorted(train)


def test_crowd_counts_as_cat_without_ignore_index(coco):
    root, cache = coco
    splits = coco_source.build(path=str(root), cache_dir=str(cache), ignore_index=None, categories=["cat"], negative_fraction=0.0)
    expected = expected_masks(root, "train2017")[42]
    np.testing.assert_array_equal(by_width(splits.train)[42][1], np.where(expected == IGNORE, 1, expected))


def shards(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.tfrecord")}


def test_conversion_is_cached_and_reused(coco, caplog):
    root, cache = coco
    build(root, cache)
    first = shards(cache)
    assert len(first) == 3  # train: 3 images in 2 shards; val: 1 image, 1 shard
    with caplog.at_level(logging.INFO, logger="seglab.data.coco"):
        build(root, cache)
    assert shards(cache) == first
    assert caplog.text.count("reusing") == 2
    build(root, cache, negative_fraction=0.4)  # another setting: another cache folder per split
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 4 and set(first) <= set(shards(cache))


def test_half_written_shard_is_not_trusted(coco):
    """An interrupted conversion leaves a temporary file and no manifest: the next run redoes that shard."""
    root, cache = coco
    expected = {w: m for w, (_, m) in by_width(build(root, cache).train).items()}
    (folder,) = [p for p in cache.iterdir() if p.name.startswith("train2017")]
    victim, kept = sorted(folder.glob("*.tfrecord"))
    (folder / "train2017.json").unlink()
    truncated = victim.read_bytes()[:50]
    victim.unlink()
    (folder / f"{victim.name}.tmp{dead_pid()}").write_bytes(truncated)  # what a crash mid-shard leaves behind
    kept_mtime = kept.stat().st_mtime_ns

    again = by_width(build(root, cache).train)
    assert victim.is_file() and not list(folder.glob("*.tmp*"))
    assert kept.stat().st_mtime_ns == kept_mtime  # complete shards are kept
    assert sorted(again) == sorted(expected)
    for width, (_, mask) in again.items():
        np.testing.assert_array_equal(mask, expected[width])


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"], ids=["garbage", "truncated-jpeg"])
def test_corrupt_image_is_skipped_and_named(tmp_path, caplog, content):
    root = write_coco(tmp_path / "coco")
    victim = root / "train2017" / f"{2:012d}.jpg"
    victim.write_bytes(victim.read_bytes()[:200] if content == "truncated" else content)
    with caplog.at_level(logging.WARNING, logger="seglab.data.coco"):
        splits = build(root, tmp_path / "cache")
    assert str(victim) in caplog.text and "skipped 1 image" in caplog.text
    assert sorted(by_width(splits.train)) == [40, 42]  # image 2 (width 41) is left out, the others are kept
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_problems_are_clear_errors_before_training(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="does not exist"):
        build(tmp_path / "nowhere", cache)

    root = write_coco(tmp_path / "no-images")
    for image in (root / "val2017").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="val2017 is missing or empty"):
        build(root, cache)

    root = write_coco(tmp_path / "no-annotations")
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(DataError, match="instances_val2017.json is missing"):
        build(root, cache)

    root = write_coco(tmp_path / "no-cats", {s: [i for i in images if not any(a["cat"] == CAT for a in i["anns"])]
                                             for s, images in SPLITS.items()})
    with pytest.raises(DataError, match="zero images contain a 'cat'"):
        build(root, cache)

    root = write_coco(tmp_path / "lost-image")
    (root / "train2017" / "000000000002.jpg").unlink()
    with pytest.raises(DataError, match="missing from .*000000000002.jpg"):
        build(root, cache)

    with pytest.raises(DataError, match="no category named 'kitten'"):
        build(write_coco(tmp_path / "ok"), cache, categories=["kitten"])

    with pytest.raises(DataError, match="data.num_classes=3 contradicts"):
        build(tmp_path / "ok", cache, num_classes=3)


@pytest.mark.slow
def test_short_training_on_coco_cat(coco, tmp_path):
    root, cache = coco
    run_cli(
        "data=coco_cat", f"data.source.path={root}", f"data.source.cache_dir={cache}", "data.source.shards=2",
        "data.image_size=32", "model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=2",
        "trainer.mask_samples=1", "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path,
    )
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-coco_cat").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data.ignore_index"] == "255"
    assert {"val_iou_cat", "val_iou_background", "train_loss"} <= set(run.data.metrics)
    assert len(shards(cache)) == 3


@pytest.mark.parametrize(
    "override,key",
    [("data.ignore_index=300", "data.ignore_index"), ("data.source.negative_fraction=1.0", "data.source.negative_fraction"),
     ("data.source.shards=0", "data.source.shards")],
)
def test_schema_rejects_bad_coco_settings_naming_the_key(compose_cfg, override, key):
    from seglab.config import schema

    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.")):
        schema.validate(compose_cfg("data=coco_cat", override))


def test_validation_examples_are_named_by_their_coco_file_in_reading_order(coco):
    root, cache = coco
    splits = build(root, cache)
    widths = [image.shape[1] for image, _ in splits.val.as_numpy_iterator()]
    by_id = {image["id"]: image["width"] for image in SPLITS["val2017"]}
    names = splits.about["val"].names
    assert [by_id[int(name.removesuffix(".jpg"))] for name in names] == widths
    assert all((root / "val2017" / name).is_file() for name in names)
    assert splits.about["train"].names is None and splits.about["val"].source["kind"] == "coco"

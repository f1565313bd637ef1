"""data=coco on tiny COCO-format data written here (three categories; polygons, RLE and crowds; PNG and JPEG
images): the class order, the overlap rule, the crowd rule, the cache keyed by the annotation file's content
and by the images' stamps, one conversion at a time, a carved validation split, `find`, the one-line errors,
and a short training through the command line."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from seglab.config.check import ConfigError
from seglab.data import DataError
from seglab.data import coco as coco_source
from tests.conftest import CLI_ENV, inherited_env, run_cli

PERSON, DOG, CAT = 3, 18, 17  # COCO's ids, listed in the file in this order: person, dog, cat
IGNORE = 255


def box(x: int, y: int, w: int, h: int) -> list[list[int]]:
    """A rectangle as a COCO polygon."""
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def rle(height: int, width: int, x: int, y: int, w: int, h: int, compressed: bool = True) -> dict:
    binary = np.zeros((height, width), np.uint8)
    binary[y : y + h, x : x + w] = 1
    if compressed:
        return {"size": [height, width], "counts": mask_utils.encode(np.asfortranarray(binary))["counts"].decode()}
    flat = binary.ravel(order="F")  # uncompressed RLE: run lengths, column-major, starting with zeros
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": [height, width], "counts": np.diff(np.concatenate([[0], changes])).tolist()}


# Each image has a unique width, which identifies it after the TFRecord round trip.
SPLITS = {
    "train2017": [
        # A small cat on a large dog: the cat is listed first, and still wins where they overlap.
        dict(id=1, width=40, height=32, format="PNG", anns=[(CAT, box(5, 5, 10, 10)), (DOG, rle(32, 40, 0, 0, 30, 30))]),
        # A crowd of people, one person standing out of it (hers where they overlap), a cat in uncompressed RLE.
        dict(id=2, width=36, height=30, format="JPEG", anns=[
            (PERSON, rle(30, 36, 0, 0, 36, 15), 1), (PERSON, box(2, 2, 10, 10)), (CAT, rle(30, 36, 20, 18, 10, 10, False))]),
        # Two boxes of the same area overlapping: the later annotation (the cat) wins.
        dict(id=3, width=38, height=30, format="PNG", anns=[(DOG, rle(30, 38, 0, 0, 10, 10)), (CAT, rle(30, 38, 5, 5, 10, 10))]),
        dict(id=4, width=34, height=30, format="JPEG", anns=[]),  # nothing: all background
    ],
    "val2017": [
        dict(id=11, width=32, height=30, format="PNG", anns=[(DOG, box(4, 4, 16, 16))]),
        dict(id=12, width=30, height=30, format="JPEG", anns=[(PERSON, rle(30, 30, 10, 10, 8, 8)), (CAT, box(0, 20, 8, 8))]),
    ],
}
CATEGORIES = [{"id": PERSON, "name": "person"}, {"id": DOG, "name": "dog"}, {"id": CAT, "name": "cat"}]


def pixels(image: dict) -> np.ndarray:
    return np.random.default_rng(image["id"]).integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)


def write_coco(root: Path, splits: dict = SPLITS) -> Path:
    """COCO 2017's layout: annotations/instances_<split>.json and a <split>/ folder of images."""
    (root / "annotations").mkdir(parents=True)
    for split, images in splits.items():
        (root / split).mkdir()
        doc = {"info": {}, "images": [], "annotations": [], "categories": CATEGORIES}
        for image in images:
            name = f"{image['id']:012d}.{'png' if image['format'] == 'PNG' else 'jpg'}"
            Image.fromarray(pixels(image)).save(root / split / name, image["format"])
            doc["images"].append(dict(id=image["id"], file_name=name, width=image["width"], height=image["height"]))
            for category, segmentation, *crowd in image["anns"]:
                doc["annotations"].append(dict(
                    id=len(doc["annotations"]) + 1, image_id=image["id"], category_id=category, segmentation=segmentation,
                    iscrowd=crowd[0] if crowd else 0, area=1.0, bbox=[0, 0, 1, 1]))
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def expected_mask(image: dict, labels: dict[int, int]) -> np.ndarray:
    """The documented rule, on pycocotools' own decoding: instances largest first (equal: file order), so the
    smaller (or later) wins; crowd regions no instance covers are IGNORE."""
    h, w = image["height"], image["width"]
    decoded = []
    for order, (category, segmentation, *crowd) in enumerate(image["anns"]):
        if category not in labels:
            continue
        compressed = isinstance(segmentation, dict) and isinstance(segmentation["counts"], str)
        rles = segmentation if compressed else mask_utils.frPyObjects(segmentation, h, w)
        region = mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool)
        decoded.append((bool(crowd and crowd[0]), -int(region.sum()), order, labels[category], region))
    mask, covered = np.zeros((h, w), np.uint8), np.zeros((h, w), bool)
    for _, _, _, label, region in sorted((d for d in decoded if not d[0]), key=lambda d: d[1:3]):
        mask[region], covered = label, covered | region
    for _, _, _, _, region in (d for d in decoded if d[0]):
        mask[region & ~covered] = IGNORE
    return mask


def by_width(dataset) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {image.shape[1]: (image, mask) for image, mask in dataset.as_numpy_iterator()}


@pytest.fixture
def data(tmp_path):
    return write_coco(tmp_path / "coco"), tmp_path / "cache"


def build(root, cache, **kw):
    return coco_source.build(path=str(root), cache_dir=str(cache), shards=2, ignore_index=IGNORE, **kw)


def test_every_category_of_the_file_in_its_order_masks_as_documented(data):
    root, cache = data
    splits = build(root, cache, num_classes=4, class_names=["background", "person", "dog", "cat"])
    labels = {PERSON: 1, DOG: 2, CAT: 3}
    for split, dataset in (("train2017", splits.train), ("val2017", splits.val)):
        got = by_width(dataset)
        assert sorted(got) == sorted(image["width"] for image in SPLITS[split])  # every image, the empty one too
        for image in SPLITS[split]:
            picture, mask = got[image["width"]]
            assert picture.dtype == np.uint8 and mask.dtype == np.int32 and picture.shape == (*mask.shape, 3)
            np.testing.assert_array_equal(mask, expected_mask(image, labels))
            if image["format"] == "PNG":  # kept lossless: the very pixels
                np.testing.assert_array_equal(picture, pixels(image))
    assert splits.test is None and splits.about["val"].source["categories"] == ["person", "dog", "cat"]


def test_overlaps_the_smaller_instance_wins_and_of_equal_ones_the_later(data):
    root, cache = data
    train = by_width(build(root, cache, categories=["dog", "cat"]).train)
    cat_on_dog = train[40][1]
    assert cat_on_dog[10, 10] == 2 and cat_on_dog[25, 25] == 1 and cat_on_dog[31, 39] == 0
    equal = train[38][1]
    assert equal[2, 2] == 1 and equal[7, 7] == 2 and equal[12, 12] == 2  # the overlap [5, 10) is the later cat's


def test_crowd_is_ignored_where_no_instance_covers_it(data):
    root, cache = data
    crowd = by_width(build(root, cache, categories=["person", "cat"]).train)[36][1]
    assert crowd[5, 5] == 1  # the person standing out of the crowd
    assert crowd[1, 30] == IGNORE and crowd[20, 25] == 2 and crowd[25, 2] == 0
    counted = by_width(coco_source.build(path=str(root), cache_dir=str(cache), categories=["person", "cat"],
                                         ignore_index=None).train)[36][1]
    assert counted[1, 30] == 1  # with ignore_index null the crowd counts as its category


def test_categories_are_classes_in_the_order_given_and_negatives_follow_negative_fraction(data):
    root, cache = data
    only_cats = by_width(build(root, cache, categories=["cat"], negative_fraction=0.0).train)
    assert sorted(only_cats) == [36, 38, 40]  # images holding a cat
    assert all(set(np.unique(mask)) <= {0, 1} for _, mask in only_cats.values())
    swapped = by_width(build(root, cache, categories=["cat", "dog"]).train)[40][1]
    assert swapped[10, 10] == 1 and swapped[25, 25] == 2


def test_the_cache_is_keyed_by_the_annotation_files_content(data):
    root, cache = data
    build(root, cache)
    folders = {p.name for p in cache.iterdir()}
    build(root, cache)
    assert {p.name for p in cache.iterdir()} == folders  # reused
    annotations = root / "annotations" / "instances_train2017.json"
    stat = annotations.stat()
    doc = json.loads(annotations.read_text())
    doc["annotations"][0]["category_id"] = DOG  # the small cat becomes a dog: same size, same time stamp
    annotations.write_text(json.dumps(doc))
    os.utime(annotations, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert annotations.stat().st_size == stat.st_size
    mask = by_width(build(root, cache).train)[40][1]
    assert mask[10, 10] == 2  # a dog now: reconverted, not read from the records of the old file
    assert len({p.name for p in cache.iterdir()} - folders) == 1  # train's new key; val's file is as it was


def files_under(cache: Path) -> dict[str, int]:
    """Each file of the conversions (relative to the cache) and its mtime_ns."""
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


def test_an_image_replaced_in_place_is_converted_again_and_untouched_ones_are_reused(data):
    root, cache = data
    build(root, cache)
    first = files_under(cache)
    build(root, cache)
    assert files_under(cache) == first  # untouched images: the conversion is reused, nothing written again
    image = SPLITS["train2017"][0]  # 000000000001.png (width 40): train's shard 0 with image 3; shard 1 holds 2 and 4
    replaced = 255 - pixels(image)  # same name, same size in pixels, new pixels
    Image.fromarray(replaced).save(root / "train2017" / "000000000001.png")
    train = by_width(build(root, cache).train)
    np.testing.assert_array_equal(train[40][0], replaced)  # not the stale record of the old pixels
    np.testing.assert_array_equal(train[38][0], pixels(SPLITS["train2017"][2]))
    now = files_under(cache)
    gone, added = set(first) - set(now), set(now) - set(first)
    assert len(gone) == len(added) == 1 and all("train2017-00000-of-00002-" in name for name in gone | added)
    assert all(now[name] == first[name] for name in first if name.endswith(".tfrecord") and name not in gone)
    assert all(now[name] == first[name] for name in first if name.startswith("val2017"))  # val untouched


def test_a_conversion_without_image_stamps_is_converted_again_in_its_folder(data):
    """A conversion made before the images were stamped (its manifest has none, its shards' names no digest)."""
    root, cache = data
    build(root, cache)
    (folder,) = cache.glob("train2017-*")
    manifest = json.loads((folder / "train2017.json").read_text())
    old_names = []
    for name in manifest["shards"]:
        old_names.append(name.rsplit("-", 1)[0] + ".tfrecord")
        (folder / name).rename(folder / old_names[-1])
    del manifest["images"]
    (folder / "train2017.json").write_text(json.dumps({**manifest, "shards": old_names}))
    Image.fromarray(255 - pixels(SPLITS["train2017"][0])).save(root / "train2017" / "000000000001.png")
    train = by_width(build(root, cache).train)
    np.testing.assert_array_equal(train[40][0], 255 - pixels(SPLITS["train2017"][0]))
    assert not any((folder / name).exists() for name in old_names)
    assert len(list(folder.glob("*.tfrecord"))) == 2


CONVERT = """import logging, sys
from seglab.data import coco
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
splits = coco.build(path=sys.argv[1], cache_dir=sys.argv[2], shards=2, ignore_index=255)
print("widths", sorted(int(image.shape[1]) for image, _ in splits.train.as_numpy_iterator()))
"""


def test_two_runs_converting_at_once_convert_once(data, tmp_path):
    """Both runs find a replaced image while a third holds the folder's lock: both wait; then one converts
    the shard again and the other reuses it."""
    root, cache = data
    build(root, cache)
    (folder,) = cache.glob("train2017-*")
    Image.fromarray(255 - pixels(SPLITS["train2017"][0])).save(root / "train2017" / "000000000001.png")
    lock = os.open(folder / coco_source.LOCK, os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    outputs = [tmp_path / f"run{i}.txt" for i in range(2)]
    runs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(root), str(cache)], stdout=out.open("w"),
                             stderr=subprocess.STDOUT, env={**inherited_env(), **CLI_ENV}) for out in outputs]
    try:
        deadline = time.monotonic() + 120
        while not all("waiting for it" in out.read_text() for out in outputs):
            assert time.monotonic() < deadline and all(run.poll() is None for run in runs), [o.read_text() for o in outputs]
            time.sleep(0.2)
    finally:
        os.close(lock)  # releases it
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [out.read_text() for out in outputs]
    texts = [out.read_text() for out in outputs]
    assert all("widths [34, 36, 38, 40]" in text for text in texts)
    joined = "".join(texts)
    assert joined.count("train2017: wrote 1 of its 2 shards") == 1 and joined.count("reusing 4 examples") == 1
    manifest = json.loads((folder / "train2017.json").read_text())
    assert sorted(p.name for p in folder.glob("*.tfrecord")) == sorted(manifest["shards"]) and not list(folder.glob("*.tmp*"))


def test_without_a_val_file_a_seeded_share_of_train_is_validation(data):
    root, cache = data
    splits = build(root, cache, val=None, val_fraction=0.25, seed=3)
    train, val = by_width(splits.train), by_width(splits.val)
    assert len(val) == 1 and len(train) == 3 and not set(train) & set(val)
    assert sorted(by_width(build(root, cache, val=None, val_fraction=0.25, seed=3).val)) == sorted(val)
    (name,) = splits.about["val"].names
    assert int(Path(name).stem) in {i["id"] for i in SPLITS["train2017"] if i["width"] in val}


def test_without_a_test_file_a_seeded_share_of_train_is_the_test_split_after_validation(data):
    """test_fraction (as +experiment=compare_on_my_data sets it): the next share of the same seeded order, so the
    validation images of the seed are those without it, and the three splits are disjoint and whole."""
    root, cache = data
    before = by_width(build(root, cache, val=None, val_fraction=0.25, seed=3).val)
    splits = build(root, cache, val=None, val_fraction=0.25, test_fraction=0.25, seed=3)
    train, val, test = by_width(splits.train), by_width(splits.val), by_width(splits.test)
    assert sorted(val) == sorted(before) and len(test) == 1 and len(train) == 2
    assert sorted([*train, *val, *test]) == sorted(i["width"] for i in SPLITS["train2017"])
    assert splits.about["val"].source == build(root, cache, val=None, val_fraction=0.25, seed=3).about["val"].source
    given = build(root, cache, test_fraction=0.5, seed=3)  # the val file given: test is carved from train alone
    assert len(by_width(given.test)) == 2 and not set(by_width(given.test)) & set(by_width(given.train))


def test_a_test_split_is_read_and_named(data):
    root, cache = data
    test = {"annotations": "annotations/instances_val2017.json", "images": "val2017"}
    splits = build(root, cache, test=test)
    assert sorted(by_width(splits.test)) == [30, 32]
    assert splits.about["test"].names == ["000000000011.png", "000000000012.jpg"]
    assert splits.about["train"].names is None


def test_find_reads_the_coco_2017_layout_and_a_single_json(data, tmp_path):
    root, cache = data
    found = coco_source.find(root)
    assert found == {"path": str(root), "train": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
                     "val": {"annotations": "annotations/instances_val2017.json", "images": "val2017"}, "test": None}
    splits = coco_source.build(**found, cache_dir=str(cache))
    assert int(splits.train.cardinality()) == 4

    single = tmp_path / "export"  # one JSON beside its images, as annotation tools export it
    (root / "train2017").rename(single)
    (root / "annotations" / "instances_train2017.json").rename(single / "labels.json")
    assert coco_source.find(single / "labels.json") == {
        "path": str(single), "train": {"annotations": "labels.json", "images": "."}, "val": None, "test": None}
    carved = coco_source.build(**coco_source.find(single / "labels.json"), cache_dir=str(cache))
    assert int(carved.train.cardinality()) + int(carved.val.cardinality()) == 4

    (tmp_path / "other" / "annotations").mkdir(parents=True)
    (tmp_path / "other" / "annotations" / "instances_train2017.json").write_text('{"captions": []}')
    (tmp_path / "other" / "train2017").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "other" / "train2017" / "a.png")
    assert coco_source.find(tmp_path / "other") is None and coco_source.find(tmp_path) is None


def test_problems_are_one_line_naming_the_file_and_the_fix(data, tmp_path):
    root, _ = data

    fresh = itertools.count()

    def build(root, cache, **kw):  # a fresh cache each time: a converted split no longer reads its files
        return coco_source.build(path=str(root), cache_dir=str(cache / str(next(fresh))), **kw)

    cache = tmp_path / "cache"
    (root / "annotations" / "instances_val2017.json").rename(tmp_path / "aside.json")
    with pytest.raises(DataError, match=r"instances_val2017\.json is missing: set data\.source\.val\.annotations"):
        build(root, cache)
    (tmp_path / "aside.json").rename(root / "annotations" / "instances_val2017.json")

    with pytest.raises(DataError, match=r"instances_train2017\.json has no category named 'kitten' \(it has: person, dog, cat\)"):
        build(root, cache, categories=["kitten"])

    with pytest.raises(DataError, match=r"data\.num_classes=81 contradicts .*instances_train2017\.json: 3 categories "
                                        r"\(person, dog, cat\) .*use data\.num_classes=4 data\.class_names=\[background,person,dog,cat\]"):
        build(root, cache, num_classes=81)

    (root / "train2017" / "000000000003.png").unlink()
    with pytest.raises(DataError, match=r"1 images listed in .*instances_train2017\.json are missing from .*train2017, e\.g\. 000000000003\.png"):
        build(root, cache)

    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "train2017" / "000000000003.png")
    with pytest.raises(DataError, match=r"000000000003\.png is 9x9 but .*instances_train2017\.json gives it 38x30"):
        build(root, cache)

    (root / "annotations" / "instances_train2017.json").write_text('{"images": [{"id": 1')
    with pytest.raises(DataError, match=r"instances_train2017\.json is not valid JSON"):
        build(root, cache)


@pytest.mark.parametrize("overrides,key", [
    (["data.source.categories=[cat,dog]", "data.num_classes=81"], r"data\.num_classes=81 contradicts data\.source\.categories"),
    (["data.source.categories=[cat,dog]", "data.num_classes=3", "data.class_names=[background,dog,cat]"], r"data\.class_names"),
    (["data.source.categories=[cat,cat]", "data.num_classes=3", "data.class_names=[background,cat,dog]"], r"data\.source\.categories"),
    (["data.source.val=null", "data.source.val_fraction=1.0"], r"data\.source\.val_fraction"),
    (["data.source.test={annotations: a.json}"], r"data\.source\.test"),
])
def test_the_config_check_names_the_key(compose_cfg, overrides, key):
    from seglab.config import schema

    with pytest.raises(ConfigError, match=key):
        schema.validate(compose_cfg("data=coco", *overrides))


def test_the_classes_come_from_the_categories_or_the_train_file_where_the_config_leaves_them_null(data, tmp_path):
    """data.num_classes and data.class_names are null in conf/data/coco.yaml: background, then data.source.categories,
    or the train file's categories in its order, found where COCO's files keep them (the end), where labelling
    tools put them (the start), or anywhere in a file read whole; a count that contradicts them, or a missing train
    file, is one line before TensorFlow loads."""
    from seglab.config import schema

    root, _ = data

    def classes(*overrides):
        cfg = schema.compose(["data=coco", f"data.source.path={root}", *overrides])
        return cfg.data.num_classes, list(cfg.data.class_names)

    assert classes() == (4, ["background", "person", "dog", "cat"])  # "categories" ends the file
    assert classes("data.source.categories=[cat,dog]") == (3, ["background", "cat", "dog"])
    assert classes("data.source.categories=[cat,dog]", "data.num_classes=3") == (3, ["background", "cat", "dog"])
    assert schema.compose(["data=coco_cat", f"data.source.path={root}"]).data.class_names == ["background", "cat"]
    train = root / "annotations" / "instances_train2017.json"
    doc = json.loads(train.read_text())
    reordered = {"categories": list(reversed(doc["categories"])), "images": doc["images"], "annotations": doc["annotations"]}
    train.write_text(json.dumps(reordered))  # as CVAT exports: "categories" first
    assert classes() == (4, ["background", "cat", "dog", "person"])
    images = doc["images"] + [{"id": 10**6 + i, "file_name": f"{i:0100d}.jpg", "width": 1, "height": 1}
                              for i in range(coco_source.CHUNK_BYTES // 100)]  # more than the head that is read
    note = {"description": "x" * 2 * coco_source.TAIL_BYTES}  # more than the tail that is read
    train.write_text(json.dumps({"images": images, "categories": doc["categories"], "annotations": doc["annotations"], "info": note}))
    text = train.read_bytes()
    assert b'"categories"' not in text[:coco_source.CHUNK_BYTES] + text[-coco_source.TAIL_BYTES:]  # so it is read whole
    assert classes() == (4, ["background", "person", "dog", "cat"])
    with pytest.raises(ConfigError, match=rf"data\.num_classes=3 contradicts {train}: 3 categories \(person, dog, cat\) plus "
                                          r"background make 4 classes; use data\.num_classes=4 data\.class_names=\[background,person"):
        classes("data.num_classes=3")
    with pytest.raises(DataError, match=rf"data\.source\.path={tmp_path / 'nowhere'} does not exist"):
        schema.compose(["data=coco", f"data.source.path={tmp_path / 'nowhere'}"])


@pytest.mark.slow
def test_short_training_on_coco_from_the_command_line(data, tmp_path):
    root, cache = data
    run_cli(
        "data=coco", f"data.source.path={root}", f"data.source.cache_dir={cache}", "data.source.shards=2",
        "data.image_size=32", "model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=2",
        "trainer.mask_samples=1", "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path,
    )
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-coco").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data.num_classes"] == "4"  # the file's 3 categories + background
    assert {"val_iou_person", "val_iou_dog", "val_iou_cat", "train_loss"} <= set(run.data.metrics)


@pytest.mark.parametrize("fault, expected", [
    ("twice", r"image id 1 is listed 2 times \(1 ids listed more than once\): give each image its own id"),
    ("no_image", r"annotation \d+ has image_id 99, which no image of the file has: add that image to \"images\""),
    ("no_category", r"annotation \d+ has category_id 77, which no category of the file has: add that category to "
                    r"\"categories\""),
    ("polygon", r"annotation \d+ of image 000000000001\.png: its segmentation cannot be decoded \(.+\): give polygons of 6 "
                r"or more numbers"),
])
def test_what_pycocotools_passes_over_is_one_line_naming_the_file(data, fault, expected):
    """An image id listed twice (pycocotools kept one entry), an annotation of an image or a category the file does
    not list (dropped: its pixels were background), a polygon of 3 numbers (pycocotools' own traceback)."""
    root, cache = data
    file = root / "annotations" / "instances_train2017.json"
    doc = json.loads(file.read_text())
    first = doc["annotations"][0]
    if fault == "twice":
        doc["images"].append(dict(doc["images"][0]))
    elif fault == "no_image":
        doc["annotations"].append({**first, "id": 999, "image_id": 99})
    elif fault == "no_category":
        doc["annotations"].append({**first, "id": 999, "category_id": 77})
    else:
        doc["annotations"].append({**first, "id": 999, "segmentation": [[5, 5, 25]]})
    file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=(rf"^{file}: " if fault != "polygon" else "^") + expected):
        build(root, cache)

"""data=pets: the tfds source (examples from tfds.testing.mock_data), the folder source on a tiny
archive layout written here (with the real archive's quirks), offline failure, a short training."""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from seglab.data import DataError, pets, pipeline
from tests.conftest import run_cli, run_module

TFDS_VERSION = "4.*.*"


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("data.source.kind=folder",), "data.source.path"),  # the folder source needs its folder
        (("data.source.kind=zip",), "data.source.kind"),
        (("data.source.val_percent=0",), "data.source.val_percent"),
        (("data.augment.crop_min=0",), "data.augment.crop_min"),
    ],
)
def test_schema_rejects_bad_pets_settings_naming_the_key(compose_cfg, overrides, key):
    from seglab.config import schema

    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.")):
        schema.validate(compose_cfg("data=pets", *overrides))


def test_pets_config_passes_the_run_settings_to_the_source(compose_cfg):
    cfg = compose_cfg("data=pets", "deterministic=false")
    assert cfg.data.source.deterministic is False and cfg.data.source.num_classes == 3 == len(cfg.data.class_names)


# --- tfds ------------------------------------------------------------------------------------


@pytest.fixture
def prepared_tfds(tmp_path, monkeypatch):
    """A tfds_dir holding oxford_iiit_pet's real metadata; examples come from tfds.testing.mock_data.

    The mocked examples have random sizes (image and mask unrelated) and random values; the mask
    values are folded into the trimap range 1..3 so that the label shift can be checked.
    """
    import tensorflow_datasets as tfds

    data_dir = tmp_path / "tfds"
    builder = tfds.builder(f"oxford_iiit_pet:{TFDS_VERSION}", data_dir=str(data_dir))
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)
    requested = []
    with tfds.testing.mock_data(num_examples=6, data_dir=str(data_dir)):
        mocked = tfds.core.DatasetBuilder.as_dataset

        def as_trimaps(self, split, **kwargs):
            requested.append(str(split))
            examples = mocked(self, split=split, **kwargs)
            return examples.map(lambda ex: {**ex, "segmentation_mask": ex["segmentation_mask"] % 3 + 1})

        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", as_trimaps)
        yield data_dir, requested, builder


def test_tfds_source_shifts_trimaps_and_uses_the_documented_splits(prepared_tfds):
    data_dir, requested, builder = prepared_tfds
    splits = pets.build(kind="tfds", tfds_dir=str(data_dir), version=TFDS_VERSION, val_percent=10)
    assert requested[:3] == ["train[:90%]", "train[90%:]", "test"]
    assert splits.test is not None
    raw = list(builder.as_dataset(split="train[:90%]").as_numpy_iterator())
    ours = list(splits.train.as_numpy_iterator())
    assert len(ours) == len(raw) == 6
    for (image, mask), example in zip(ours, raw):
        np.testing.assert_array_equal(image, example["image"])
        np.testing.assert_array_equal(mask, example["segmentation_mask"][..., 0].astype(np.int32) - 1)
    assert any(image.shape[:2] != mask.shape for image, mask in ours)  # the mock's unrelated sizes


def test_tfds_examples_of_random_sizes_become_fixed_size_batches(prepared_tfds):
    data_dir, _, _ = prepared_tfds
    splits = pets.build(kind="tfds", tfds_dir=str(data_dir), version=TFDS_VERSION)
    batches = pipeline.make(
        splits.train, image_size=32, batch_size=3, training=True, seed=0, deterministic=True,
        augment_options=dict(hflip=True, crop_min=0.7, brightness=0.1, contrast=0.1),
    )
    for images, masks in batches.as_numpy_iterator():
        assert images.shape == (3, 32, 32, 3) and masks.shape == (3, 32, 32)
        assert set(np.unique(masks)) <= {0, 1, 2}


def test_tfds_masks_outside_the_trimap_values_fail_before_training(tmp_path):
    """Unfolded mock values (0..254) contradict num_classes=3: a clear error, not a silent wrong label."""
    import tensorflow_datasets as tfds

    data_dir = tmp_path / "tfds"
    builder = tfds.builder(f"oxford_iiit_pet:{TFDS_VERSION}", data_dir=str(data_dir))
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=2, data_dir=str(data_dir)):
        with pytest.raises(DataError, match=r"value outside 1\.\.3.*data\.num_classes=3"):
            pets.build(kind="tfds", tfds_dir=str(data_dir), version=TFDS_VERSION)


def test_num_classes_other_than_three_is_rejected():
    with pytest.raises(DataError, match="data.num_classes=4 contradicts"):
        pets.build(kind="folder", path="/nonexistent", num_classes=4)


def test_tfds_missing_offline_fails_fast_and_says_what_to_do(tmp_path, monkeypatch):
    # A proxy on a closed local port: the download cannot start, even on a machine with network.
    for name, value in {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}.items():
        monkeypatch.setenv(name, value)
    empty = tmp_path / "no-tfds-here"
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        pets.build(kind="tfds", tfds_dir=str(empty), connect_timeout=3)
    assert time.perf_counter() - start < 60  # the bound is 30 s; tfds alone retries for ~200 s
    message = str(error.value)
    for expected in ("oxford_iiit_pet", str(empty), "127.0.0.1:9", pets.prepare_command(str(empty)), "data.source.kind=folder", "data=shapes"):
        assert expected in message
    # the prepare command is a runnable Python one-liner (`tfds build` needs apache_beam)
    words = shlex.split(pets.prepare_command(str(empty)))
    assert words[:2] == ["python", "-c"] and "download_and_prepare()" in words[2]
    compile(words[2], "prepare", "exec")


# --- the unpacked archives -------------------------------------------------------------------

TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3


def trimap(height: int, width: int, values=(TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER)) -> np.ndarray:
    """A pet ellipse (value 1) with a border ring (3) on background (2); `values` remaps the three."""
    yy, xx = np.mgrid[:height, :width]
    r = ((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2
    out = np.full((height, width), values[1], np.uint8)
    out[r <= 1.3] = values[2]
    out[r <= 1.0] = values[0]
    return out


def write_archive(root: Path, trainval: int = 10, test: int = 3) -> dict[str, dict]:
    """The Oxford-IIIT Pet archive layout with its quirks; every image has a unique width (its id)."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"Breed_{i}" for i in range(trainval + test)]
    quirks = {"Breed_1": "png_rgba", "Breed_2": "gif", "Breed_3": "grayscale", "Breed_4": "single_valued",
              "Breed_5": "no_background", "Breed_6": "undecodable"}
    files = {}
    for i, name in enumerate(names):
        height, width = 24 + i % 3, 20 + i
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        labels = trimap(height, width)
        kind = quirks.get(name, "jpeg")
        image_path = root / "images" / f"{name}.jpg"
        if kind == "png_rgba":
            Image.fromarray(np.dstack([rgb, np.full((height, width), 128, np.uint8)]), "RGBA").save(image_path, "PNG")
        elif kind == "gif":
            Image.fromarray(rgb).convert("P").save(image_path, "GIF")
        elif kind == "grayscale":
            Image.fromarray(rgb[..., 0]).save(image_path, "JPEG")
        elif kind == "undecodable":
            image_path.write_bytes(b"\xff\xd8 this is not an image")
        else:
            Image.fromarray(rgb).save(image_path, "JPEG", quality=95)
        if kind == "single_valued":
            labels = np.full((height, width), TRIMAP_BACKGROUND, np.uint8)
        if kind == "no_background":  # only pet and border: bilinear resizing would invent background (1.5 -> 2)
            labels = trimap(height, width, values=(TRIMAP_PET, TRIMAP_BORDER, TRIMAP_BORDER))
        Image.fromarray(labels).save(root / "annotations" / "trimaps" / f"{name}.png")
        files[name] = dict(kind=kind, rgb=rgb, labels=labels, width=width)
    (root / "annotations" / "trimaps" / "._Breed_0.png").write_bytes(b"\x00\x05macOS resource fork")
    (root / "images" / "Breed_0.mat").write_bytes(b"not an image either")  # the real archive has a few
    lines = lambda ns: "".join(f"{n} {i % 37 + 1} {i % 2 + 1} {i % 25 + 1}\n" for i, n in enumerate(ns))
    (root / "annotations" / "trainval.txt").write_text(lines(names[:trainval]))
    (root / "annotations" / "test.txt").write_text(lines(names[trainval:]))
    return files


def by_width(dataset) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {image.shape[1]: (image, mask) for image, mask in dataset.as_numpy_iterator()}


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "pets"
    return root, write_archive(root)


def test_folder_source_reads_every_quirk_and_skips_the_undecodable_file(archive, caplog):
    root, files = archive
    with caplog.at_level(logging.WARNING, logger="seglab.data.pets"):
        splits = pets.build(kind="folder", path=str(root), val_percent=20)
    log = caplog.text
    assert "Breed_6" in log and "skipped 1 of 13" in log
    train, val, test = by_width(splits.train), by_width(splits.val), by_width(splits.test)
    assert len(train) + len(val) == 9 and len(val) == 2 and len(test) == 3  # 10 trainval - 1 undecodable
    assert not set(train) & set(val)
    seen = {**train, **val, **test}
    for name, f in files.items():
        if f["kind"] == "undecodable":
            assert f["width"] not in seen
            continue
        image, mask = seen[f["width"]]
        assert image.dtype == np.uint8 and image.shape == f["rgb"].shape  # RGB whatever the file held
        np.testing.assert_array_equal(mask, f["labels"].astype(np.int32) - 1)  # trimap 1/2/3 -> 0/1/2, pixel for pixel
        if f["kind"] == "png_rgba":
            np.testing.assert_array_equal(image, f["rgb"])  # alpha dropped, colours kept
        if f["kind"] == "grayscale":
            assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    assert set(np.unique(seen[files["Breed_4"]["width"]][1])) == {1}  # single-valued trimap: all background


def test_folder_split_is_seeded(archive):
    root, _ = archive
    widths = lambda seed: sorted(by_width(pets.build(kind="folder", path=str(root), val_percent=30, split_seed=seed).val))
    assert widths(0) == widths(0)
    assert any(widths(0) != widths(seed) for seed in (1, 2, 3))


def test_pipeline_resizes_trimaps_nearest_neighbour(archive):
    """A pet+border-only trimap upsampled bilinearly would gain background pixels; ours must not."""
    root, files = archive
    splits = pets.build(kind="folder", path=str(root))
    width = files["Breed_5"]["width"]
    only = splits.train.concatenate(splits.val).filter(lambda image, mask: tf.shape(image)[1] == width)
    (_, masks), = pipeline.make(only, image_size=64, batch_size=1, training=False, seed=0, deterministic=True).as_numpy_iterator()
    assert set(np.unique(masks)) == {0, 2}


def test_an_empty_test_list_gives_no_test_split(tmp_path):
    """The stand-in archive of seglab.data.pets_like with --test 0 writes an empty test.txt."""
    root = tmp_path / "pets"
    write_archive(root, trainval=7, test=0)
    splits = pets.build(kind="folder", path=str(root), val_percent=20)
    assert int(splits.train.cardinality()) + int(splits.val.cardinality()) == 6 and splits.test is None


def test_folder_without_lists_uses_every_image(tmp_path):
    root = tmp_path / "pets"
    write_archive(root, trainval=7, test=0)
    for listing in ("trainval.txt", "test.txt"):
        (root / "annotations" / listing).unlink()
    splits = pets.build(kind="folder", path=str(root), val_percent=20)
    assert int(splits.train.cardinality()) + int(splits.val.cardinality()) == 6  # 7 - 1 undecodable
    assert splits.test is None


def damage(root: Path, how: str) -> None:
    if how == "no-images":
        for image in (root / "images").glob("*.jpg"):
            image.unlink()
    elif how == "missing-trimap":
        (root / "annotations" / "trimaps" / "Breed_7.png").unlink()
    elif how == "size-mismatch":
        Image.fromarray(trimap(5, 5)).save(root / "annotations" / "trimaps" / "Breed_8.png")


@pytest.mark.parametrize(
    "how,expected",
    [
        ("missing-path", "is not a directory"),
        ("no-images", r"no \*\.jpg images"),
        ("missing-trimap", "no matching pair.*Breed_7"),
        ("size-mismatch", "differ in size.*Breed_8"),
    ],
)
def test_folder_problems_are_clear_errors_before_training(tmp_path, how, expected):
    root = tmp_path / "pets"
    if how != "missing-path":
        write_archive(root)
        damage(root, how)
    with pytest.raises(DataError, match=expected):
        pets.build(kind="folder", path=str(root))


# --- through the command line ----------------------------------------------------------------


@pytest.mark.slow
def test_short_training_on_the_folder_source(tmp_path):
    root = tmp_path / "pets"
    write_archive(root, trainval=24, test=4)
    done = run_cli(
        "data=pets", "data.source.kind=folder", f"data.source.path={root}", "data.image_size=32",
        "model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=8", "trainer.mask_samples=2",
        "tracking.log_model=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path,
    )
    assert "best val_mean_iou" in done.stdout + done.stderr
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-pets").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data.source.kind"] == "folder"
    assert {"val_iou_pet", "val_iou_background", "val_iou_border"} <= set(run.data.metrics)


def _split_names(names: list[str], val_percent: int, seed: int = 0) -> tuple[list[str], list[str]]:
    order = [str(n) for n in np.random.default_rng(seed).permutation(sorted(names))]
    n_val = max(1, round(len(order) * val_percent / 100))
    return order[:-n_val], order[-n_val:]


def _break_trimap(root: Path, name: str) -> Path:
    path = root / "annotations" / "trimaps" / f"{name}.png"
    labels = np.asarray(Image.open(path)).copy()
    labels[0, 0] = 7  # not a trimap value
    Image.fromarray(labels).save(path)
    return path


def test_a_bad_trimap_in_the_validation_split_is_named_before_training(archive):
    root, files = archive
    names = [n for n in sorted(files) if n in (root / "annotations" / "trainval.txt").read_text()]
    _, val = _split_names(names, 20)
    victim = _break_trimap(root, next(n for n in val if files[n]["kind"] == "jpeg"))
    with pytest.raises(DataError, match=rf"val split.*value outside 1\.\.3.*not the trimaps of the archive.*{victim}"):
        pets.build(kind="folder", path=str(root), val_percent=20)


@pytest.mark.slow
def test_a_bad_trimap_beyond_the_first_examples_is_one_line_naming_the_file_before_the_run_opens(tmp_path):
    """Beyond the examples the source checks, the in-graph check stops the pass that counts every
    training label before the run opens; seglab.errors turns TensorFlow's InvalidArgumentError into one
    line with the file, and the store holds no run."""
    root = tmp_path / "pets"
    files = write_archive(root, trainval=30, test=2)
    train, _ = _split_names([f"Breed_{i}" for i in range(30)], 10)
    victim = _break_trimap(root, next(n for n in reversed(train) if files[n]["kind"] == "jpeg"))
    done = run_cli(
        "data=pets", "data.source.kind=folder", f"data.source.path={root}", "data.image_size=32", "model.depth=2",
        "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=8", "trainer.mask_samples=1", "tracking.log_model=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path, check=False,
    )
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 2 and last.startswith("seglab: seglab label check:") and str(victim) in last, done.stderr[-3000:]
    assert "not the trimaps of the archive" in last and "label_map" not in last, last  # pets has no data.source.label_map
    assert "Traceback" not in done.stderr
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("seglab-pets")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []


# --- data=pets reads the archives through data=folder (issue 31): the same splits and labels as before ---------

# What seglab's own pets reader gave on `write_archive(root, trainval=16, test=3)` with val_percent=20, split_seed=0
# (main before issue 31); Breed_6 is undecodable, so it is in no split.
PINNED_SPLITS = {
    "train": ["Breed_10", "Breed_5", "Breed_11", "Breed_4", "Breed_0", "Breed_12", "Breed_15", "Breed_13", "Breed_8",
              "Breed_14", "Breed_3", "Breed_7"],
    "val": ["Breed_2", "Breed_1", "Breed_9"],
    "test": ["Breed_16", "Breed_17", "Breed_18"],
}


def test_data_pets_folder_kind_gives_the_same_splits_and_labels_as_before(tmp_path, compose_cfg):
    """The composed data=pets (kind=folder), built as training builds it: each split's names in order (the seeded
    rule of docs/data.md, and the names pinned before the source went through data=folder), each mask the trimap - 1."""
    from hydra.utils import instantiate

    root = tmp_path / "pets"
    files = write_archive(root, trainval=16, test=3)
    cfg = compose_cfg("data=pets", "data.source.kind=folder", f"data.source.path={root}", "data.source.val_percent=20")
    splits = instantiate(cfg.data.source)
    names = {split: [Path(n).stem for n in splits.about[split].names] for split in ("train", "val", "test")}
    train, val = _split_names([f"Breed_{i}" for i in range(16)], 20)
    assert names == {"train": [n for n in train if n != "Breed_6"], "val": [n for n in val if n != "Breed_6"],
                     "test": ["Breed_16", "Breed_17", "Breed_18"]}
    assert names == PINNED_SPLITS
    for split in ("train", "val", "test"):
        examples = list(getattr(splits, split).as_numpy_iterator())
        assert len(examples) == len(names[split])
        for name, (image, mask) in zip(names[split], examples):
            assert image.shape == files[name]["rgb"].shape and image.dtype == np.uint8 and mask.dtype == np.int32
            np.testing.assert_array_equal(mask, files[name]["labels"].astype(np.int32) - 1)
        about = splits.about[split]
        assert about.files == [str(root / d / f"{n}{ext}") for n in names[split]
                               for d, ext in (("images", ".jpg"), ("annotations/trimaps", ".png"))]


FOLDER_OVERRIDES = (  # docs/own-data.md: data=pets data.source.kind=folder, spelt as data=folder
    "data=folder", "data.source.image_dir=images", "data.source.mask_dir=annotations/trimaps",
    "data.source.lists={train:annotations/trainval.txt,test:annotations/test.txt}", "data.source.list_format=name",
    "data.source.label_map={1:0,2:1,3:2}", "data.ignore_index=null", "data.num_classes=3",
    "data.class_names=[pet,background,border]",
)


def test_data_pets_folder_kind_is_data_folder_with_the_archive_options(tmp_path, compose_cfg):
    from hydra.utils import instantiate

    from seglab.config import schema

    root = tmp_path / "pets"
    write_archive(root, trainval=16, test=3)
    as_folder = compose_cfg(*FOLDER_OVERRIDES, f"data.source.path={root}", "data.source.val_fraction=0.2", "data.source.seed=2")
    schema.validate(as_folder)
    assert {key: as_folder.data.source[key] for key in pets.FOLDER_OPTIONS} == pets.FOLDER_OPTIONS
    as_pets = compose_cfg("data=pets", "data.source.kind=folder", f"data.source.path={root}", "data.source.val_percent=20",
                          "data.source.split_seed=2")
    folder_splits, pets_splits = instantiate(as_folder.data.source), instantiate(as_pets.data.source)
    for split in ("train", "val", "test"):
        assert folder_splits.about[split].files == pets_splits.about[split].files
        for (image, mask), (pets_image, pets_mask) in zip(getattr(folder_splits, split).as_numpy_iterator(),
                                                          getattr(pets_splits, split).as_numpy_iterator()):
            np.testing.assert_array_equal(image, pets_image)
            np.testing.assert_array_equal(mask, pets_mask)


def test_inspect_finds_the_archive_and_prints_data_pets(tmp_path, capsys, compose_cfg):
    from seglab.config import schema
    from seglab.data import inspect

    root = tmp_path / "pets"
    write_archive(root, trainval=10, test=3)
    inspect.main([str(root)])
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"{root}: data=pets reads it (kind=folder, path={root})"
    assert {"  train: 8 images", "  val: 1 images", "  test: 3 images", "train on it with:"} <= set(said)
    assert any(line.startswith("  label 2 (border): ") for line in said)
    command = shlex.split(said[-1])
    assert command[:6] == ["python", "-m", "seglab", "data=pets", "data.source.kind=folder", f"data.source.path={root}"]
    assert "data.class_names=[pet,background,border]" in command
    schema.validate(compose_cfg(*command[3:]))


@pytest.mark.slow
def test_the_command_inspect_prints_for_the_archive_trains(tmp_path):
    root = tmp_path / "pets"
    write_archive(root, trainval=12, test=2)
    done = run_module("seglab.data", "inspect", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    command = shlex.split(done.stdout.splitlines()[-1])
    assert command[3:6] == ["data=pets", "data.source.kind=folder", f"data.source.path={root}"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli(*command[3:], "model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=4",
            "trainer.mask_samples=1", "tracking.log_model=false", f"tracking.uri={uri}", cwd=tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-pets").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data.source.kind"] == "folder"

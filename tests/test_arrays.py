"""data=arrays on NumPy files written here: the FCN notes' layout byte for byte (np.save of uint8 images and
one-hot masks), float images, label masks, .npz members, the seeded validation split, each error line, a
memory-mapped 2 GB array that is not read whole, and a short training through `python -m seglab`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from seglab import errors
from seglab.data import DataError, arrays
from tests.conftest import ROOT, run_cli

N, SIDE, CLASSES = 16, 32, 3


def notes_layout(root: Path, n_train: int = N, n_val: int = 4, seed: int = 0) -> dict:
    """The FCN notes' files: images_<split>.npy (N, H, W, 3) uint8 and seg_<split>.npy (N, H, W, C) one-hot uint8."""
    rng = np.random.default_rng(seed)
    written = {}
    for word, n in (("training", n_train), ("validation", n_val)):
        images = rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)
        labels = rng.integers(0, CLASSES, (n, SIDE, SIDE))
        np.save(root / f"images_{word}.npy", images)
        np.save(root / f"seg_{word}.npy", np.eye(CLASSES, dtype=np.uint8)[labels])
        written[word] = images, labels
    return written


def examples(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(image, mask) for image, mask in dataset.as_numpy_iterator()]


def test_the_notes_layout_reads_as_written(tmp_path):
    written = notes_layout(tmp_path)
    splits = arrays.build(str(tmp_path), num_classes=CLASSES)
    for split, word in (("train", "training"), ("val", "validation")):
        got = examples(getattr(splits, split))
        images, labels = written[word]
        assert len(got) == len(images)
        assert all(image.dtype == np.uint8 and mask.dtype == np.int32 for image, mask in got)
        assert np.array_equal(np.stack([g[0] for g in got]), images)
        assert np.array_equal(np.stack([g[1] for g in got]), labels)  # argmax of the one-hot rows
    assert splits.test is None
    assert splits.about["val"].names[:2] == ["images_validation.npy[0]", "images_validation.npy[1]"]
    assert splits.about["train"].files == sorted([str(tmp_path / "images_training.npy"), str(tmp_path / "seg_training.npy")])


@pytest.mark.parametrize("save", ["npy", "npz", "npz_compressed"])
def test_float_images_label_masks_and_npz_members(tmp_path, save):
    rng = np.random.default_rng(1)
    images = rng.random((6, 8, 10, 3)).astype(np.float32)
    images[0, 0, 0] = (0.0, 1.0, 0.5)
    labels = rng.integers(0, CLASSES, (6, 8, 10, 1)).astype(np.int64)
    if save == "npy":
        np.save(tmp_path / "x.npy", images)
        np.save(tmp_path / "y.npy", labels)
        names = {"images": "x.npy", "masks": "y.npy"}
    else:
        (np.savez if save == "npz" else np.savez_compressed)(tmp_path / "data.npz", x_train=images, y_train=labels)
        names = {"images": "data.npz:x_train", "masks": "data.npz:y_train"}
    splits = arrays.build(str(tmp_path), **names, val_images=None, val_fraction=0.25, num_classes=CLASSES)
    got = examples(splits.train) + examples(splits.val)
    order = [int(name.rsplit("[", 1)[1][:-1]) for split in ("train", "val") for name in splits.about[split].names]
    assert sorted(order) == list(range(6))
    expected = np.rint(images * 255).astype(np.uint8)
    assert np.array_equal(np.stack([g[0] for g in got]), expected[order])  # per element: round(x * 255)
    assert tuple(got[order.index(0)][0][0, 0]) == (0, 255, 128)
    assert np.array_equal(np.stack([g[1] for g in got]), labels[order, ..., 0])


def test_validation_from_members_of_one_npz(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8), rng.integers(0, CLASSES, (7, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", x_train=x[:5], y_train=y[:5], x_val=x[5:], y_val=y[5:])
    splits = arrays.build(str(tmp_path), images="data.npz:x_train", masks="data.npz:y_train", val_images="data.npz:x_val",
                          val_masks="data.npz:y_val", num_classes=CLASSES)
    assert splits.about["val"].names == ["data.npz:x_val[0]", "data.npz:x_val[1]"]
    assert np.array_equal(np.stack([image for image, _ in examples(splits.val)]), x[5:])


def test_a_pixel_without_a_class_gets_ignore_index(tmp_path):
    onehot = np.zeros((2, 4, 4, CLASSES), np.uint8)
    onehot[..., 1] = 1
    onehot[0, 2, 3] = 0  # no class at all
    np.save(tmp_path / "images_training.npy", np.zeros((2, 4, 4, 3), np.uint8))
    np.save(tmp_path / "seg_training.npy", onehot)
    splits = arrays.build(str(tmp_path), num_classes=CLASSES, ignore_index=255, val_fraction=0.5)
    masks = {name: mask for name, (_, mask) in zip(splits.about["train"].names + splits.about["val"].names,
                                                    examples(splits.train) + examples(splits.val))}
    assert masks["images_training.npy[0]"][2, 3] == 255 and (masks["images_training.npy[1]"] == 1).all()
    assert np.count_nonzero(masks["images_training.npy[0]"] == 255) == 1


def test_validation_is_a_seeded_fraction_without_its_files(tmp_path):
    notes_layout(tmp_path)
    for name in ("images_validation.npy", "seg_validation.npy"):
        (tmp_path / name).unlink()

    def split(seed):
        about = arrays.build(str(tmp_path), num_classes=CLASSES, val_fraction=0.25, seed=seed).about
        return about["train"].names, about["val"].names

    train, val = split(0)
    assert len(val) == 4 and len(train) == 12 and not set(train) & set(val)
    assert split(0) == (train, val) and split(1)[1] != val


def test_test_is_a_seeded_fraction_after_validation_without_its_files(tmp_path):
    """test_fraction: the next part of validation's seeded order; validation stays as without it; disjoint, whole."""
    notes_layout(tmp_path)
    (tmp_path / "images_validation.npy").unlink()
    (tmp_path / "seg_validation.npy").unlink()
    before = arrays.build(str(tmp_path), num_classes=CLASSES, val_fraction=0.25, seed=5).about["val"].names
    splits = arrays.build(str(tmp_path), num_classes=CLASSES, val_fraction=0.25, test_fraction=0.25, seed=5)
    names = {split: splits.about[split].names for split in ("train", "val", "test")}
    assert names["val"] == before and len(names["test"]) == 4 and len(names["train"]) == N - 8
    assert sorted(sum(names.values(), [])) == sorted(f"images_training.npy[{i}]" for i in range(N))
    assert len(examples(splits.test)) == 4


def test_a_large_memory_mapped_array_is_not_read_whole(tmp_path):
    """2 GB of images in a sparse file (no disk used): iterating a few examples keeps the peak RSS small."""
    script = textwrap.dedent(f"""
        import resource, numpy as np
        from numpy.lib.format import open_memmap
        import tensorflow as tf
        from seglab.data import arrays
        n, side = 2731, 512  # 2731 * 512 * 512 * 3 bytes: 2.0 GiB
        open_memmap("{tmp_path}/images_training.npy", "w+", np.uint8, (n, side, side, 3)).flush()
        open_memmap("{tmp_path}/seg_training.npy", "w+", np.uint8, (n, side, side)).flush()
        tf.data.Dataset.range(1).get_single_element()  # tf.data's own start-up, before the measure
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        splits = arrays.build("{tmp_path}", num_classes=2)
        for image, mask in splits.train.take(5):
            assert image.shape == (side, side, 3)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    grown_mib = int(done.stdout.split()[-1])
    assert (tmp_path / "images_training.npy").stat().st_size > 2 * 1024**3
    print(f"peak RSS grew by {grown_mib} MiB")
    assert grown_mib < 200, f"peak RSS grew by {grown_mib} MiB while reading 5 examples of a 2 GiB array"


def _write(tmp_path, images, masks, name="images_training.npy"):
    np.save(tmp_path / name, images)
    np.save(tmp_path / "seg_training.npy", masks)


U8 = np.uint8
BAD = {
    "count": ((np.zeros((4, 8, 8, 3), U8), np.zeros((3, 8, 8), U8)), "holds 4 images but .*seg_training.npy 3 masks"),
    "size": ((np.zeros((4, 8, 8, 3), U8), np.zeros((4, 8, 6), U8)), "8x8 px, but the masks in .*seg_training.npy are 8x6"),
    "image dtype": ((np.zeros((4, 8, 8, 3), np.int16), np.zeros((4, 8, 8), U8)), "images_training.npy: images of dtype int16"),
    "image rank": ((np.zeros((4, 8, 8, 3, 1), U8), np.zeros((4, 8, 8), U8)), r"images_training.npy: images of shape \(4, 8, 8, 3, 1\)"),
    "mask rank": ((np.zeros((4, 8, 8, 3), U8), np.zeros((4, 8), U8)), r"seg_training.npy: masks of shape \(4, 8\)"),
    "float labels": ((np.zeros((4, 8, 8, 3), U8), np.zeros((4, 8, 8), np.float32)), "seg_training.npy: label masks of dtype float32"),
    "one-hot classes": ((np.zeros((4, 8, 8, 3), U8), np.zeros((4, 8, 8, 5), U8)),
                        "seg_training.npy: one-hot masks with 5 classes .* data.num_classes=3: set data.num_classes=5"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arrays_are_one_line_naming_the_file(tmp_path, case):
    (images, masks), match = BAD[case]
    _write(tmp_path, images, masks)
    with pytest.raises(DataError, match=match) as raised:
        arrays.build(str(tmp_path), num_classes=CLASSES)
    assert "\n" not in str(raised.value) and str(tmp_path) in str(raised.value)


def test_missing_and_half_present_files_are_named(tmp_path):
    with pytest.raises(DataError, match=f"images=images_training.npy: {tmp_path}/images_training.npy does not exist"):
        arrays.build(str(tmp_path), num_classes=CLASSES)
    notes_layout(tmp_path)
    (tmp_path / "seg_validation.npy").unlink()
    with pytest.raises(DataError, match="data.source.val_images is in .* but data.source.val_masks=seg_validation.npy is not"):
        arrays.build(str(tmp_path), num_classes=CLASSES)
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(DataError, match=r"holds 2 arrays \(a, b\): name one, e.g. data.source.images=two.npz:a"):
        arrays.build(str(tmp_path), images="two.npz", val_images=None, num_classes=CLASSES)


@pytest.mark.parametrize("value", [1.5, float("nan")])
def test_float_images_outside_0_1_stop_with_one_line_naming_the_file(tmp_path, value):
    import tensorflow as tf

    images = np.full((4, 8, 8, 3), 0.5, np.float32)
    images[2, 1, 1, 0] = value
    _write(tmp_path, images, np.zeros((4, 8, 8), U8))
    splits = arrays.build(str(tmp_path), val_images=None, val_fraction=0.25, num_classes=CLASSES)
    with pytest.raises(tf.errors.OpError) as raised:  # what a generator raises reaches tf.data's reader so
        examples(splits.train.concatenate(splits.val))
    line = errors.explain(raised.value)
    assert line.startswith(f"seglab label check: {tmp_path}/images_training.npy, image 2: float image values span")
    assert "outside 0..1" in line and "\n" not in line


def test_find_names_the_notes_files(tmp_path):
    assert arrays.find(tmp_path) is None
    notes_layout(tmp_path)
    assert arrays.find(tmp_path) == {
        "path": str(tmp_path), "images": "images_training.npy", "masks": "seg_training.npy",
        "val_images": "images_validation.npy", "val_masks": "seg_validation.npy", "test_images": None, "test_masks": None,
    }


CLASS_OVERRIDES = (f"data.num_classes={CLASSES}", "data.class_names=[a,b,c]")
TINY_RUN = ("data.image_size=32", "model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=4",
            "trainer.mask_samples=1", "tracking.log_model=false")


def test_the_command_refuses_bad_arrays_before_a_run_opens(tmp_path):
    notes_layout(tmp_path)
    np.save(tmp_path / "seg_training.npy", np.zeros((N, SIDE, SIDE, 5), U8))
    done = run_cli("data=arrays", f"data.source.path={tmp_path}", *CLASS_OVERRIDES, *TINY_RUN,
                   f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path, check=False)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"seglab: {tmp_path}/seg_training.npy: one-hot masks with 5 classes"), done.stderr[-2000:]
    # Nothing recorded: not even a store (the resume plan does not create one to find nothing in it).
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_short_training_on_the_notes_arrays(tmp_path):
    notes_layout(tmp_path)
    run_cli("data=arrays", f"data.source.path={tmp_path}", *CLASS_OVERRIDES, *TINY_RUN,
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-arrays").experiment_id])
    assert run.info.status == "FINISHED"
    assert {"val_iou_a", "val_iou_c", "train_loss"} <= set(run.data.metrics)
    assert run.data.params["data.source.images"] == "images_training.npy"

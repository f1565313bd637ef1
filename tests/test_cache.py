"""`data.cache=PREFIX`, tf.data's file cache: keyed by the split's files as they are now (an edited mask is read
again, untouched files reuse the cache), and filled by one run at a time (a second run at once reads uncached;
what a killed writer left is cleared)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from seglab.data import Provenance, batches_of, cache_name
from tests.conftest import ROOT, run_cli
from tests.test_folder import labels_for, write_mask, write_split

NAMES = [f"f{i}" for i in range(6)]
SIZE = 32


def folder_data(tmp_path):
    """Six 32x24 image/mask pairs in images/ + masks/ (a seeded validation split of one), and the file cache's
    folder tmp_path/cache, made as a training's preflight makes it."""
    write_split(tmp_path / "data" / "images", tmp_path / "data" / "masks", NAMES)
    (tmp_path / "cache").mkdir()
    return tmp_path / "data"


def overrides(data, cache) -> list[str]:
    return ["data=folder", f"data.source.path={data}", "data.num_classes=3", "data.class_names=[a,b,c]",
            f"data.image_size={SIZE}", f"data.cache={cache}", "trainer.batch_size=2"]


def config(compose_cfg, data, cache, *more):
    return compose_cfg(*overrides(data, cache), *more)


def a_training_mask(cfg):
    """A mask file of the training split (the source lists each pair as image, mask)."""
    return Path(instantiate(cfg.data.source).about["train"].files[1])


def train_masks(cfg):
    """One pass over the training split as a training run starts it: the source built, its batches (with the
    file cache) read; the masks in the source's order (evaluation batches: no shuffle, no augmentation)."""
    splits = instantiate(cfg.data.source)
    batches = batches_of(cfg, splits.train, "train", about=splits.about["train"])
    return np.concatenate([mask for _, mask in batches.as_numpy_iterator()])


def cache_files(tmp_path) -> dict:
    """Each file tf.data wrote under tmp_path/cache -> its mtime_ns."""
    return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".writer")}


def test_an_edited_mask_is_read_again_and_untouched_files_reuse_the_cache(tmp_path, compose_cfg):
    data = folder_data(tmp_path)
    cfg = config(compose_cfg, data, tmp_path / "cache" / "x")
    first = train_masks(cfg)
    written = cache_files(tmp_path)
    assert any(name.endswith(".index") for name in written) and not any("lockfile" in name for name in written)

    again = train_masks(cfg)  # same files: the same cache, read, not written again
    np.testing.assert_array_equal(again, first)
    assert cache_files(tmp_path) == written

    edited = a_training_mask(cfg)
    write_mask(edited, np.zeros_like(labels_for(0, 32, 24)))  # every pixel of one mask is class 0 now
    os.utime(edited, ns=(0, 1))  # an mtime of its own, even on a file system with coarse timestamps
    after = train_masks(cfg)
    assert any(not mask.any() for mask in after) and not any(not mask.any() for mask in first)
    assert sum(not np.array_equal(a, b) for a, b in zip(after, first)) == 1  # that mask, and only it, changed


def test_the_memory_cache_and_no_cache_read_the_edited_mask_and_write_no_files(tmp_path, compose_cfg):
    data = folder_data(tmp_path)
    for cache in ("memory", "null"):
        cfg = config(compose_cfg, data, cache)
        first = train_masks(cfg)
        edited = a_training_mask(cfg)
        write_mask(edited, np.zeros_like(labels_for(0, 32, 24)))
        assert sum(not np.array_equal(a, b) for a, b in zip(train_masks(cfg), first)) == 1, cache
        write_mask(edited, labels_for(1, 32, 24))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"] and not cache_files(tmp_path)


def test_the_key_follows_each_file_and_the_settings_that_shape_the_examples(tmp_path, compose_cfg):
    data = folder_data(tmp_path)
    cfg = config(compose_cfg, data, tmp_path / "cache" / "x")
    files = sorted(str(p) for p in data.rglob("*.png"))
    about = Provenance({"kind": "folder", "path": str(data)}, files=files)
    name = cache_name(cfg.data, "train", about)
    assert cache_name(cfg.data, "train", about) == name  # nothing read or changed: the same key
    assert cache_name(cfg.data, "val", about) != name
    assert cache_name(cfg.data, "train", Provenance(about.source, files=files[:-1])) != name  # a file less
    for override in ("data.image_size=64", "data.resize=fit", "data.ignore_index=0", "data.source.seed=1"):
        assert cache_name(config(compose_cfg, data, tmp_path / "cache" / "x", override).data, "train", about) != name, override
    os.utime(files[3], ns=(0, 5))  # replaced with a file of the same size: its mtime tells
    assert cache_name(cfg.data, "train", about) != name


FILLER = """
import sys
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
import seglab.config.schema
from seglab.data import batches_of
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose(config_name="config", overrides=sys.argv[2:])
splits = instantiate(cfg.data.source)
# The training split's cache, never finished (an endless pass): tf.data's lockfile and partial shard are there.
batches = iter(batches_of(cfg, splits.train.repeat(), "train", about=splits.about["train"]))
next(batches)
print("filling", flush=True)
sys.stdin.read()
"""


def test_a_second_run_reads_uncached_while_another_fills_the_cache_and_clears_a_killed_writers_leftovers(
        tmp_path, compose_cfg, caplog):
    data = folder_data(tmp_path)
    cfg = config(compose_cfg, data, tmp_path / "cache" / "x")
    expected = train_masks(config(compose_cfg, data, "null"))
    filler = subprocess.Popen([sys.executable, "-c", FILLER, str(ROOT / "conf"), *overrides(data, tmp_path / "cache" / "x")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        assert filler.stdout.readline().strip() == "filling"
        assert any(name.endswith(".lockfile") for name in cache_files(tmp_path))
        with caplog.at_level(logging.WARNING, logger="seglab.data"):
            np.testing.assert_array_equal(train_masks(cfg), expected)  # not tf.data's AlreadyExistsError
        assert "another run is filling the train split's cache" in caplog.text
        assert not any(name.endswith(".index") for name in cache_files(tmp_path))
    finally:
        filler.kill()  # as kill -9: its lockfile and partial shard stay behind
        filler.wait()
    assert any(name.endswith(".lockfile") for name in cache_files(tmp_path))
    np.testing.assert_array_equal(train_masks(cfg), expected)  # the dead writer's lock is gone: this run fills it
    written = cache_files(tmp_path)
    assert any(name.endswith(".index") for name in written) and not any("lockfile" in name for name in written)


def test_a_split_without_provenance_is_read_uncached_with_a_warning(tmp_path, compose_cfg, caplog):
    data = folder_data(tmp_path)
    cfg = config(compose_cfg, data, tmp_path / "cache" / "x")
    splits = instantiate(cfg.data.source)
    with caplog.at_level(logging.WARNING, logger="seglab.data"):
        batches = batches_of(cfg, splits.train, "train")  # e.g. a source of your own whose Splits.about is empty
        assert len(list(batches.as_numpy_iterator())) == 3
    assert "does not say which files the train split reads" in caplog.text
    assert not cache_files(tmp_path)


@pytest.mark.slow
def test_a_training_fills_the_train_and_val_caches_and_the_next_one_after_an_edit_fills_a_new_train_cache(tmp_path, compose_cfg):
    data = folder_data(tmp_path)
    args = (*overrides(data, "./cache/x"), "model.depth=2", "model.base_filters=4", "trainer.epochs=1",
            "trainer.mask_samples=1", "tracking.log_model=false", "tracking.uri=sqlite:///m.db")
    run_cli(*args, cwd=tmp_path)
    first = cache_files(tmp_path)
    assert sorted(n.split("-")[2] for n in first if n.endswith(".index")) == ["train", "val"], sorted(first)
    write_mask(a_training_mask(config(compose_cfg, data, "null")), np.zeros((24, 32), np.uint8))
    run_cli(*args, cwd=tmp_path)
    indexes = sorted(n for n in cache_files(tmp_path) if n.endswith(".index"))
    assert len(indexes) == 3 and set(indexes) > {n for n in first if n.endswith(".index")}  # a new train cache, val kept
    assert {n: t for n, t in cache_files(tmp_path).items() if n in first} == first  # the old ones untouched

"""data=tfrecord on record files written here: the U-Net-on-COCO notes' schema byte for byte (tf.train.Example with
imageContent and maskContent as raw uint8 bytes, height and width as int64, written by tf.io.TFRecordWriter), PNG
bytes under other key names with GZIP, the seeded validation split, each error line, and a short training."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from seglab import errors
from seglab.data import DataError, tfrecord
from tests.conftest import run_cli

CLASSES = 3


def feature(value) -> tf.train.Feature:
    if isinstance(value, bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def notes_example(image: np.ndarray, mask: np.ndarray) -> bytes:
    """The notes' record: the image's and the mask's raw uint8 bytes, its height and width."""
    return tf.train.Example(features=tf.train.Features(feature={
        "imageContent": feature(image.tobytes()), "maskContent": feature(mask.tobytes()),
        "height": feature(image.shape[0]), "width": feature(image.shape[1]),
    })).SerializeToString()


def write(path: Path, records: list[bytes], options: str | None = None) -> None:
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)


def pairs(n: int, seed: int, side: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (side, side + k % 3, 3), dtype=np.uint8), rng.integers(0, CLASSES, (side, side + k % 3), dtype=np.uint8))
            for k in range(n)]


def write_notes_records(root: Path, n_train: int = 16, n_val: int = 4) -> tuple[list, list]:
    """n_train training examples in two shards and n_val validation examples, 32 px high, 32 to 34 wide."""
    train, val = pairs(n_train, 0), pairs(n_val, 1)
    write(root / "train-0.tfrecord", [notes_example(*p) for p in train[: n_train // 2]])
    write(root / "train-1.tfrecord", [notes_example(*p) for p in train[n_train // 2 :]])
    write(root / "val.tfrecord", [notes_example(*p) for p in val])
    return train, val


@pytest.fixture
def notes_records(tmp_path):
    return tmp_path, *write_notes_records(tmp_path)


def key(image: np.ndarray, mask: np.ndarray) -> bytes:
    return image.tobytes() + str(image.shape).encode() + mask.astype(np.uint8).tobytes()


def test_the_notes_schema_reads_as_written(notes_records):
    root, train, val = notes_records
    splits = tfrecord.build(str(root))
    for dataset, written in ((splits.train, train), (splits.val, val)):
        got = list(dataset.as_numpy_iterator())
        assert all(image.dtype == np.uint8 and mask.dtype == np.int32 for image, mask in got)
        assert sorted(key(*g) for g in got) == sorted(key(*w) for w in written)
    assert [key(*g) for g in splits.train.take(2).as_numpy_iterator()] == [key(*train[0]), key(*train[8])]  # interleaved
    assert splits.test is None and splits.about["train"].files == [str(root / "train-0.tfrecord"), str(root / "train-1.tfrecord")]


@pytest.mark.parametrize("encoding", ["png", "auto"])
def test_png_bytes_under_other_keys_with_gzip(tmp_path, encoding):
    written = pairs(5, 2, side=12)
    records = [tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": feature(tf.io.encode_png(image).numpy()), "label/encoded": feature(tf.io.encode_png(mask[..., None]).numpy()),
    })).SerializeToString() for image, mask in written]
    write(tmp_path / "train.tfrecord.gz", records, "GZIP")
    write(tmp_path / "val.tfrecord.gz", records[:1], "GZIP")
    splits = tfrecord.build(str(tmp_path), image_key="image/encoded", mask_key="label/encoded", height_key=None,
                            width_key=None, encoding=encoding, mask_encoding=encoding, compression="GZIP")
    assert sorted(key(*g) for g in splits.train.as_numpy_iterator()) == sorted(key(*w) for w in written)



@pytest.mark.parametrize("encoding", ["jpeg", "auto"])
def test_jpeg_image_bytes_with_png_masks(tmp_path, encoding):
    """Encoded JPEG images (lossy: close to the pixels written) with PNG masks (exact), no height or width features."""
    def smooth(shape, k):  # a ramp: JPEG keeps it within a few levels, where random pixels would lose ~10
        return (np.add.outer(np.arange(shape[0]), np.arange(shape[1]))[..., None] * 4 + [0, 40 * k, 80]).astype(np.uint8)

    written = [(smooth(mask.shape, k), mask) for k, (_, mask) in enumerate(pairs(4, 3, side=16))]
    records = [tf.train.Example(features=tf.train.Features(feature={
        "imageContent": feature(tf.io.encode_jpeg(image, quality=100, chroma_downsampling=False).numpy()),
        "maskContent": feature(tf.io.encode_png(mask[..., None]).numpy()),
    })).SerializeToString() for image, mask in written]
    write(tmp_path / "train.tfrecord", records)
    splits = tfrecord.build(str(tmp_path), val=None, val_fraction=0.5, height_key=None, width_key=None,
                            encoding=encoding, mask_encoding="png" if encoding == "jpeg" else "auto")
    got = list(splits.train.concatenate(splits.val).as_numpy_iterator())
    assert len(got) == len(written)
    by_mask = {mask.tobytes(): image for image, mask in got}
    for image, mask in written:
        decoded = by_mask[mask.astype(np.int32).tobytes()]
        assert decoded.shape == image.shape and decoded.dtype == np.uint8
        assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 3  # JPEG's loss, not raw bytes misread


def test_validation_is_a_seeded_fraction_of_the_training_records(notes_records):
    root, train, _ = notes_records

    def split(seed):
        splits = tfrecord.build(str(root), val=None, val_fraction=0.3, seed=seed)
        return [sorted(key(*g) for g in ds.as_numpy_iterator()) for ds in (splits.train, splits.val)]

    kept, held = split(0)
    assert held and kept and not set(kept) & set(held) and sorted(kept + held) == sorted(key(*w) for w in train)
    assert split(0) == [kept, held] and split(5)[1] != held


def test_test_is_the_next_seeded_share_of_the_training_records_without_its_files(notes_records):
    """test_fraction: records hashed into [val_fraction, val_fraction + test_fraction); validation as without it."""
    root, train, _ = notes_records
    before = {key(*g) for g in tfrecord.build(str(root), val=None, val_fraction=0.3, seed=1).val.as_numpy_iterator()}
    splits = tfrecord.build(str(root), val=None, val_fraction=0.3, test_fraction=0.3, seed=1)
    got = {split: [key(*g) for g in getattr(splits, split).as_numpy_iterator()] for split in ("train", "val", "test")}
    assert set(got["val"]) == before and got["test"] and not set(got["test"]) & (set(got["val"]) | set(got["train"]))
    assert sorted(sum(got.values(), [])) == sorted(key(*w) for w in train)


def test_no_matching_file_names_the_glob(tmp_path):
    with pytest.raises(DataError, match=f"no file matches data.source.train=train\\*.tfrecord\\* in data.source.path={tmp_path}"):
        tfrecord.build(str(tmp_path))


def test_a_missing_key_names_the_key_and_the_file(notes_records):
    root, _, _ = notes_records
    with pytest.raises(DataError, match=f"{root}/train-0.tfrecord: its first record has no feature 'image' "
                                        r"\(data.source.image_key\); its features are height, imageContent, maskContent, width"):
        tfrecord.build(str(root), image_key="image")
    with pytest.raises(DataError, match="feature 'maskContent' .* is a bytes_list, not a int64_list"):
        tfrecord.build(str(root), height_key="maskContent")


def test_gzip_without_the_setting_says_to_set_it(tmp_path):
    write(tmp_path / "train.tfrecord", [notes_example(*pairs(1, 0)[0])], "GZIP")
    with pytest.raises(DataError, match=r"train.tfrecord: cannot be read as TFRecords: it is GZIP-compressed: set data.source.compression=GZIP"):
        tfrecord.build(str(tmp_path))


def test_a_later_bad_record_stops_with_one_line_naming_the_file(tmp_path):
    (image, mask), (other, _) = pairs(2, 0)
    short = tf.train.Example(features=tf.train.Features(feature={
        "imageContent": feature(other.tobytes()[:-3]), "maskContent": feature(mask.tobytes()),
        "height": feature(other.shape[0]), "width": feature(other.shape[1])})).SerializeToString()
    write(tmp_path / "train.tfrecord", [notes_example(image, mask), short])
    splits = tfrecord.build(str(tmp_path), val=None, val_fraction=0.01)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(splits.train.concatenate(splits.val).as_numpy_iterator())
    assert errors.explain(raised.value) == (f"seglab label check: the imageContent of a record does not hold height x width x 3 "
                                            f"raw bytes file: {tmp_path}/train.tfrecord")


def test_find_reads_names_and_the_first_record(notes_records, tmp_path_factory):
    root, _, _ = notes_records
    assert tfrecord.find(tmp_path_factory.mktemp("empty")) is None
    assert tfrecord.find(root) == {
        "path": str(root), "train": "train*.tfrecord*", "val": "val*.tfrecord*", "test": None, "compression": "none",
        "image_key": "imageContent", "mask_key": "maskContent", "height_key": "height", "width_key": "width",
        "encoding": "raw", "mask_encoding": "raw",
    }
    other = tmp_path_factory.mktemp("png")
    image, mask = pairs(1, 0)[0]
    write(other / "data.tfrecord", [tf.train.Example(features=tf.train.Features(feature={
        "img": feature(tf.io.encode_jpeg(image).numpy()), "seg_png": feature(tf.io.encode_png(mask[..., None]).numpy()),
    })).SerializeToString()], "GZIP")
    found = tfrecord.find(other)
    assert found == {**found, "train": "*.tfrecord*", "val": None, "compression": "GZIP", "image_key": "img",
                     "mask_key": "seg_png", "encoding": "jpeg", "mask_encoding": "png", "height_key": None, "width_key": None}
    assert gzip.open(other / "data.tfrecord").read(1)  # find's GZIP guess is right


@pytest.mark.slow
def test_short_training_on_the_notes_records(notes_records, tmp_path):
    root, _, _ = notes_records
    run_cli("data=tfrecord", f"data.source.path={root}", f"data.num_classes={CLASSES}", "data.class_names=[a,b,c]",
            "data.image_size=32", "model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=4",
            "trainer.mask_samples=1", "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-tfrecord").experiment_id])
    assert run.info.status == "FINISHED"
    assert {"val_iou_a", "val_iou_c", "train_loss"} <= set(run.data.metrics)


@pytest.mark.parametrize("overrides,key", [
    (("data=tfrecord",), "data.source.path"),
    (("data=tfrecord", "data.source.path=d", "data.source.height_key=null"), "data.source.height_key"),
    (("data=tfrecord", "data.source.path=d", "data.source.compression=bz2"), "data.source.compression"),
    (("data=tfrecord", "data.source.path=d", "data.source.mask_encoding=gif"), "data.source.mask_encoding"),
    (("data=arrays",), "data.source.path"),
    (("data=arrays", "data.source.path=d", "data.source.val_fraction=1.0"), "data.source.val_fraction"),
    (("data=arrays", "data.source.path=d", "data.source.images=x.png"), "data.source.images"),
])
def test_the_config_check_names_the_key_before_tensorflow_work(compose_cfg, overrides, key):
    from seglab.config import schema

    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.") + "="):
        schema.validate(compose_cfg(*overrides))


def test_an_empty_validation_split_is_refused_in_one_line_before_a_run_and_by_inspect(tmp_path, compose_cfg, capsys):
    """A seeded val_fraction that takes no record of six: the runner's data check and inspect each say which split is
    empty and what to change; before, an empty val*.tfrecord split was a warning and inspect said "problems: none"."""
    from seglab.data import inspect
    from seglab.engine import train

    write(tmp_path / "train.tfrecord", [notes_example(*pair) for pair in pairs(6, 0)])
    cfg = compose_cfg("data=tfrecord", f"data.source.path={tmp_path}", f"data.num_classes={CLASSES}",
                      "data.class_names=[a,b,c]", "data.image_size=32", "data.source.val_fraction=0.01")
    assert len(list(tfrecord.build(str(tmp_path), val=None, val_fraction=0.01).val)) == 0
    with pytest.raises(DataError, match=r"^data=tfrecord: the val split holds no image: add images to it, or .*val_fraction"):
        train.read_data(cfg)
    with pytest.raises(DataError, match="cannot read it: an empty val split"):
        inspect.main([str(tmp_path), "data.source.val_fraction=0.01"])
    assert "  problem: the val split holds no image: add images to it" in capsys.readouterr().out


@pytest.mark.parametrize("encoding", ["png", "auto"])
def test_palette_and_16_bit_png_masks_are_labels_and_a_colour_png_is_one_line(tmp_path, encoding):
    """PNG masks as data=folder reads mask files: a palette PNG's indices (TensorFlow's decoder gives its colours, and
    as one channel their grey levels: 0, 38, 75 for indices 0-2), a 16-bit PNG's values (scaled to 8 bits before), a
    1-bit PNG's 0/1 (not 0/255), grey with alpha as grey; an RGB mask stops the pipeline with a line naming the key and
    the file."""
    import io

    from PIL import Image

    def encoded(labels, mode):
        picture = Image.fromarray(labels.astype(np.uint16 if mode == "I;16" else np.uint8))
        if mode in ("1", "LA"):  # 1-bit grey (TensorFlow scales it to 0/255), grey with alpha (its alpha dropped)
            picture = picture.convert(mode) if mode == "LA" else Image.fromarray(labels.astype(bool))
        if mode == "P":
            picture = picture.convert("P")
            picture.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        elif mode == "RGB":
            picture = Image.fromarray(np.stack([labels.astype(np.uint8) * 100] * 3, -1))
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        return buffer.getvalue()

    image = np.zeros((4, 6, 3), np.uint8)
    labels = {"P": np.tile([0, 1, 2], (4, 2)), "I;16": np.tile([0, 7, 300], (4, 2)), "1": np.tile([0, 1, 1], (4, 2)),
              "LA": np.tile([0, 1, 2], (4, 2))}
    for mode, written in labels.items():
        (tmp_path / mode).mkdir()
        write(tmp_path / mode / "train.tfrecord", [tf.train.Example(features=tf.train.Features(feature={
            "imageContent": feature(tf.io.encode_png(image).numpy()), "maskContent": feature(encoded(written, mode)),
        })).SerializeToString()] * 2)
        splits = tfrecord.build(str(tmp_path / mode), val=None, val_fraction=0.5, height_key=None, width_key=None,
                                encoding=encoding, mask_encoding=encoding)
        for _, mask in splits.train.concatenate(splits.val).as_numpy_iterator():
            np.testing.assert_array_equal(mask, written)
    (tmp_path / "RGB").mkdir()
    write(tmp_path / "RGB" / "train.tfrecord", [tf.train.Example(features=tf.train.Features(feature={
        "imageContent": feature(tf.io.encode_png(image).numpy()), "maskContent": feature(encoded(labels["P"], "RGB")),
    })).SerializeToString()])
    splits = tfrecord.build(str(tmp_path / "RGB"), val=None, val_fraction=0.5, height_key=None, width_key=None,
                            encoding=encoding, mask_encoding=encoding)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(splits.train.concatenate(splits.val).as_numpy_iterator())
    assert errors.explain(raised.value) == (f"seglab label check: the maskContent of a record is a colour PNG, not labels: store "
                                            "the class of each pixel as a grey or palette PNG (or raw bytes); for colour-coded masks "
                                            f"with a colour table use data=folder file: {tmp_path}/RGB/train.tfrecord")


def test_a_file_cut_short_is_one_line_naming_it_and_the_record_before_any_pass(notes_records):
    """A copy interrupted in the 8th record's data: refused when the splits are built (only the records' headers are
    read), naming the file and the record; TensorFlow would stop mid-epoch with "truncated record at N" and no file.
    What TensorFlow raises for a damaged file it still meets is one line too."""
    root, _, _ = notes_records
    shard = root / "train-1.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-50])
    with pytest.raises(DataError, match=rf"^{shard}: record 8 \(at byte \d+\) is cut short, the file ends at byte \d+: "
                                        "the file is incomplete"):
        tfrecord.build(str(root))
    damaged = tf.errors.DataLossError(None, None, "corrupted record at 12 [[{{node IteratorGetNext}}]]")
    assert errors.explain(damaged) == ("a data file is damaged (corrupted record at 12): find it with `python -m seglab.data "
                                       "inspect PATH`, then write or copy it again")


def test_an_image_the_decoder_refuses_mid_pass_is_one_line(tmp_path):
    """A record's PNG bytes cut short: TensorFlow's decoder stops the pass (a traceback before); now one line."""
    image, mask = np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8)
    broken = tf.io.encode_png(image).numpy()[:40]
    write(tmp_path / "train.tfrecord", [tf.train.Example(features=tf.train.Features(feature={
        "imageContent": feature(data), "maskContent": feature(tf.io.encode_png(mask[..., None]).numpy()),
    })).SerializeToString() for data in (tf.io.encode_png(image).numpy(), broken)])
    splits = tfrecord.build(str(tmp_path), val=None, val_fraction=0.5, height_key=None, width_key=None,
                            encoding="png", mask_encoding="png")
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(splits.train.concatenate(splits.val).as_numpy_iterator())
    assert errors.explain(raised.value).startswith("an image or mask cannot be decoded (")
    assert errors.explain(raised.value).endswith("): write it again, or where the data are TFRecords check "
                                                 "data.source.encoding / mask_encoding")

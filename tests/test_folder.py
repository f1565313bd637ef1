"""`data=folder`: every layout and mask encoding written as real files in tmp_path, read back through the source;
each bad-data line; `find`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.config.check import ConfigError
from seglab.config.sources import check_source
from seglab.data import DataError, carve, folder

W43, H43 = 32, 24  # a 4:3 frame
W21, H21 = 48, 24  # a 2:1 frame
PALETTE = [200, 10, 10, 10, 200, 10, 10, 10, 200]  # index 0 red, 1 green, 2 blue: not the grey of the indices
COLOURS = [(0, 0, 0), (128, 64, 128), (250, 170, 30)]


def labels_for(seed: int, width: int, height: int, classes: int = 3) -> np.ndarray:
    """A mask with every class in it: vertical bands, shifted by the seed."""
    columns = (np.arange(width) * classes // width + seed) % classes
    return np.broadcast_to(columns, (height, width)).astype(np.uint8)


def write_image(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower(), "PNG")
    Image.fromarray(pixels).save(path, format=fmt)


def write_mask(path: Path, labels: np.ndarray, encoding: str = "L", colours=COLOURS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if encoding == "P":
        mask = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
        mask.putpalette(PALETTE)
    elif encoding == "I;16":
        mask = Image.fromarray(labels.astype(np.uint16))
    elif encoding == "RGB":
        mask = Image.fromarray(np.asarray(colours, np.uint8)[labels])
    else:
        mask = Image.fromarray(labels.astype(np.uint8), mode="L")
    mask.save(path, format="PNG")


def write_split(images: Path, masks: Path, names, width=W43, height=H43, encoding="L", image_ext=".png", offset=0):
    for i, name in enumerate(names):
        write_image(images / f"{name}{image_ext}", width, height, seed=i + offset)
        write_mask(masks / f"{name}.png", labels_for(i + offset, width, height), encoding)


def read(split) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(split.as_numpy_iterator())


def build(path, **arguments):
    arguments = {"num_classes": 3, "ignore_index": 255, **arguments}
    return folder.build(path=str(path), **arguments)


# --- layouts ------------------------------------------------------------------------------------


def test_camvid_split_folders_with_annot_siblings_4_3_frames_and_upper_case_extensions(tmp_path):
    write_split(tmp_path / "train", tmp_path / "trainannot", ["a", "b", "c"], image_ext=".PNG")
    write_split(tmp_path / "val", tmp_path / "valannot", ["d"], offset=3)
    write_split(tmp_path / "test", tmp_path / "testannot", ["e", "f"], image_ext=".JPG", offset=4)
    splits = build(tmp_path)
    train, test = read(splits.train), read(splits.test)
    assert [len(train), len(read(splits.val)), len(test)] == [3, 1, 2]
    image, mask = train[1]
    assert image.shape == (H43, W43, 3) and image.dtype == np.uint8 and mask.dtype == np.int32
    np.testing.assert_array_equal(mask, labels_for(1, W43, H43))
    np.testing.assert_array_equal(image, np.asarray(Image.open(tmp_path / "train" / "b.PNG")))
    assert splits.about["train"].names == ["a.PNG", "b.PNG", "c.PNG"]
    assert splits.about["test"].names == ["e.JPG", "f.JPG"]
    assert folder.find(tmp_path) == {"path": str(tmp_path)}


def test_palette_masks_in_masks_slash_split_give_their_indices_not_their_colours(tmp_path):
    write_split(tmp_path / "images" / "train", tmp_path / "masks" / "train", ["a", "b"], encoding="P")
    write_split(tmp_path / "images" / "val", tmp_path / "masks" / "val", ["c"], encoding="P", offset=2)
    assert Image.open(tmp_path / "masks" / "train" / "a.png").mode == "P"
    splits = build(tmp_path)
    np.testing.assert_array_equal(read(splits.val)[0][1], labels_for(2, W43, H43))
    assert splits.test is None


def test_sixteen_bit_masks_under_each_split_remapped_by_label_map(tmp_path):
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for i, name in enumerate(names):
            write_image(tmp_path / split / "images" / f"{name}.png", W21, H21, seed=i)
            write_mask(tmp_path / split / "masks" / f"{name}.png", (labels_for(i, W21, H21).astype(np.uint16) + 1000), "I;16")
    splits = build(tmp_path, label_map={1000: 255, 1001: 0, 1002: 1}, num_classes=2)
    mask = read(splits.train)[0][1]
    expected = np.choose(labels_for(0, W21, H21), [255, 0, 1])
    np.testing.assert_array_equal(mask, expected)
    assert mask.shape == (H21, W21)


def test_list_files_with_bom_and_crlf_names_and_path_pairs(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b", "c", "d"])
    (tmp_path / "train.txt").write_bytes("\ufeffa\r\nb.png\r\n\r\nc\r\n".encode("utf-8"))
    (tmp_path / "val.txt").write_bytes("\ufeff/SegNet/data/images/d.png /SegNet/data/masks/d.png\r\n".encode("utf-8"))
    splits = build(tmp_path)
    assert splits.about["train"].names == ["a.png", "b.png", "c.png"]
    np.testing.assert_array_equal(read(splits.val)[0][1], labels_for(3, W43, H43))


def test_pascal_voc_lists_in_imagesets_segmentation_and_masks_in_a_train_labels_sibling(tmp_path):
    """VOC's folders as it names them (JPEGImages/, SegmentationClass/ of palette masks, ImageSets/Segmentation/*.txt):
    the lists give the splits, not a seeded split of the pair; and `train_labels/` beside `train/`."""
    names = ["2007_000032", "2007_000033", "2007_000039"]
    write_split(tmp_path / "JPEGImages", tmp_path / "SegmentationClass", names, encoding="P", image_ext=".jpg")
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text(f"{names[0]}\n{names[1]}\n")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text(f"{names[2]}\n")
    splits = build(tmp_path)
    assert splits.about["train"].source["layout"] == "list files"
    assert splits.about["train"].names == [f"{n}.jpg" for n in names[:2]] and splits.about["val"].names == [f"{names[2]}.jpg"]
    np.testing.assert_array_equal(read(splits.val)[0][1], labels_for(2, W43, H43))
    write_split(tmp_path / "other" / "train", tmp_path / "other" / "train_labels", ["a", "b"])
    write_split(tmp_path / "other" / "val", tmp_path / "other" / "val_labels", ["c"], offset=2)
    assert build(tmp_path / "other").about["train"].source["layout"] == "split folders"


def test_one_pair_of_folders_split_by_seed(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", [f"n{i:02d}" for i in range(20)])
    splits = build(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3)
    names = {s: splits.about[s].names for s in ("train", "val", "test")}
    assert [len(names[s]) for s in ("train", "val", "test")] == [14, 4, 2]
    assert not set(names["train"]) & set(names["val"]) and not set(names["val"]) & set(names["test"])
    assert build(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3).about["val"].names == names["val"]
    assert build(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=4).about["val"].names != names["val"]


def test_colour_masks_through_a_classes_csv_beside_the_data(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"], width=W21, height=H21, encoding="RGB")
    (tmp_path / "classes.csv").write_text("name,r,g,b\nvoid,0,0,0\nroad,128,64,128\nsign,250,170,30\n")
    splits = build(tmp_path, val_fraction=0.34)
    for name, (_, mask) in zip(splits.about["train"].names, read(splits.train)):
        np.testing.assert_array_equal(mask, labels_for("abc".index(name[0]), W21, H21))
    assert folder.class_file(tmp_path) == (["void", "road", "sign"], [list(c) for c in COLOURS])


def test_grey_label_masks_beside_a_classes_csv_of_colours_keep_their_labels(tmp_path):
    """A class_dict.csv of colours beside index masks names the classes; the masks' values stay the labels (they were
    read as grey colours, none in the table).  A table of greys still maps grey values: 0/255 masks, [[0,0,0],[255,255,255]]."""
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    (tmp_path / "classes.csv").write_text("name,r,g,b\nvoid,0,0,0\nroad,128,64,128\nsign,250,170,30\n")
    splits = build(tmp_path, val_fraction=0.5)
    for split in ("train", "val"):
        for name, (_, mask) in zip(splits.about[split].names, read(getattr(splits, split))):
            np.testing.assert_array_equal(mask, labels_for("ab".index(name[0]), W43, H43))
    (tmp_path / "classes.csv").unlink()
    grey = tmp_path / "grey"
    write_split(grey / "images", grey / "masks", ["a", "b"])
    for name, seed in (("a", 0), ("b", 1)):
        write_mask(grey / "masks" / f"{name}.png", (labels_for(seed, W43, H43) == 1).astype(np.uint8) * 255)
    splits = build(grey, colors=[[0, 0, 0], [255, 255, 255]], val_fraction=0.5)
    assert {int(v) for _, mask in read(splits.train) + read(splits.val) for v in np.unique(mask)} == {0, 1}


def test_rgb_colours_given_for_grey_label_masks_are_refused_naming_a_mask(tmp_path):
    """data.source.colors is the user's own word: on masks of grey labels it cannot apply, and is not ignored."""
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    with pytest.raises(DataError, match=r"data.source.colors gives RGB colours, but the masks hold grey labels .*masks/[ab].png"):
        build(tmp_path, colors=[list(c) for c in COLOURS], val_fraction=0.5)


def test_colour_masks_through_data_source_colors_and_a_label_map(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"], encoding="RGB")
    splits = build(tmp_path, colors=[list(c) for c in COLOURS], label_map={0: 255, 1: 0, 2: 1}, num_classes=2, val_fraction=0.5)
    mask = read(splits.train)[0][1]
    assert set(np.unique(mask).tolist()) == {0, 1, 255}


def test_a_tiff_image_and_a_classes_json_with_names_only(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"], image_ext=".tif")
    (tmp_path / "classes.json").write_text('["sky", "road", "car"]')
    splits = build(tmp_path, val_fraction=0.5)
    assert read(splits.train)[0][0].shape == (H43, W43, 3)
    assert folder.class_file(tmp_path) == (["sky", "road", "car"], None)



@pytest.mark.parametrize("file, text", [
    ("classes.yaml", "- {name: void, color: [0, 0, 0]}\n- {name: road, color: [128, 64, 128]}\n- {name: sign, colour: [250, 170, 30]}\n"),
    ("classes.json", '{"void": [0, 0, 0], "road": [128, 64, 128], "sign": [250, 170, 30]}'),
])
def test_colour_masks_through_a_classes_yaml_list_or_a_classes_json_mapping(tmp_path, file, text):
    """The two other shapes docs/own-data.md gives a classes file: a list of {name, color} and {name: colour}."""
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"], encoding="RGB")
    (tmp_path / file).write_text(text)
    assert folder.class_file(tmp_path) == (["void", "road", "sign"], [list(c) for c in COLOURS])
    splits = build(tmp_path, val_fraction=0.5)
    (name,) = splits.about["train"].names
    np.testing.assert_array_equal(read(splits.train)[0][1], labels_for("ab".index(name[0]), W43, H43))


# --- bad data: one line each ------------------------------------------------------------------


def refused(path, **arguments) -> str:
    with pytest.raises(DataError) as caught:
        build(path, **arguments)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_no_validation_split_and_val_fraction_0_is_refused_not_replaced_by_a_tenth(tmp_path):
    write_split(tmp_path / "train", tmp_path / "trainannot", ["a", "b", "c"])
    assert "data.source.val_fraction=0" in refused(tmp_path, val_fraction=0.0)
    write_split(tmp_path / "val", tmp_path / "valannot", ["d"], offset=3)
    assert len(read(build(tmp_path, val_fraction=0.0).val)) == 1  # a val folder of its own: no fraction needed
    write_split(tmp_path / "pool" / "images", tmp_path / "pool" / "masks", ["a", "b", "c"])
    assert "e.g. data.source.val_fraction=0.1" in refused(tmp_path / "pool", val_fraction=0.0)


def test_unpaired_images_and_masks_are_counted_and_named(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"])
    (tmp_path / "masks" / "b.png").unlink()
    write_mask(tmp_path / "masks" / "zz.png", labels_for(0, W43, H43))
    message = refused(tmp_path)
    assert "1 images in" in message and "b.png" in message and "1 masks in" in message and "zz.png" in message


def test_a_mask_of_another_size_than_its_image(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    write_mask(tmp_path / "masks" / "b.png", labels_for(0, W21, H21))
    message = refused(tmp_path, val_fraction=0.5)
    assert "b.png (48x24, its image b.png 32x24)" in message


def test_a_colour_outside_the_table_names_the_colour_the_file_and_the_count(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"], encoding="RGB")
    labels = labels_for(0, W43, H43)
    write_mask(tmp_path / "masks" / "a.png", labels, "RGB", colours=[(0, 0, 0), (128, 64, 128), (1, 2, 3)])
    message = refused(tmp_path, colors=[list(c) for c in COLOURS], val_fraction=0.5)
    assert "a.png" in message and f"has {int((labels == 2).sum())} pixels" in message and "(1, 2, 3)" in message


def test_a_colour_past_the_first_masks_stops_the_command_in_one_line_before_a_run_opens(tmp_path):
    """The source checks the first LABEL_CHECK_EXAMPLES masks; the training command counts every training and validation
    mask before its MLflow run opens, so a stray colour in the 11th mask is found there: one line, no run recorded."""
    from tests.conftest import run_cli

    data = tmp_path / "data"
    names = [f"n{i:02d}" for i in range(12)]
    write_split(data / "train", data / "trainannot", names, encoding="RGB")
    write_split(data / "val", data / "valannot", ["v0"], encoding="RGB")
    (data / "classes.csv").write_text("name,r,g,b\nvoid,0,0,0\nroad,128,64,128\nsign,250,170,30\n")
    write_mask(data / "trainannot" / "n10.png", labels_for(0, W43, H43), "RGB", colours=[(0, 0, 0), (128, 64, 128), (1, 2, 3)])
    done = run_cli("data=folder", f"data.source.path={data}",  # the classes from classes.csv (the config leaves them null)
                   "data.image_size=32", "model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=4",
                   f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("seglab: ") and "trainannot/n10.png has" in last and "(1, 2, 3)" in last, last
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded, not even an empty store


def test_colour_masks_without_a_table(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"], encoding="RGB")
    assert "data.source.colors" in refused(tmp_path, val_fraction=0.5)


def test_labels_past_num_classes(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    assert "data.num_classes=2" in refused(tmp_path, num_classes=2, val_fraction=0.5)


def test_an_empty_split(tmp_path):
    write_split(tmp_path / "train", tmp_path / "trainannot", ["a", "b"])
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    assert "the val split" in refused(tmp_path)


def test_duplicate_stems(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    write_image(tmp_path / "images" / "a.jpg", W43, H43)
    assert "same stem 'a'" in refused(tmp_path)


def test_undecodable_files_are_skipped_with_a_count_or_refused(tmp_path, caplog):
    write_split(tmp_path / "train", tmp_path / "trainannot", ["a", "b", "c"])
    write_split(tmp_path / "val", tmp_path / "valannot", ["d"])
    (tmp_path / "train" / "b.png").write_bytes(b"not a png")
    truncated = (tmp_path / "trainannot" / "c.png").read_bytes()
    (tmp_path / "trainannot" / "c.png").write_bytes(truncated[: len(truncated) // 2])
    splits = build(tmp_path)
    assert splits.about["train"].names == ["a.png"]
    assert "skipped 2 of 4" in caplog.text and "b.png" in caplog.text
    assert "b.png" in refused(tmp_path, on_unreadable="fail")


def test_a_symlink_loop(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    os.symlink(tmp_path / "images", tmp_path / "images" / "again")
    assert "symlink loop" in refused(tmp_path)


def test_a_file_name_that_is_not_utf8(tmp_path):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    (Path(os.fsdecode(bytes(tmp_path / "images") + b"/caf\xe9.png"))).write_bytes(b"")
    assert "caf\\xe9.png: the file name is not UTF-8" in refused(tmp_path)


def test_a_folder_name_that_is_not_utf8_is_one_line_not_a_traceback(tmp_path):
    """A sub-folder's name in Latin-1: one line naming it; before, only file names were checked, and TensorFlow
    stopped the stream with "Error converting unicode string" (a traceback)."""
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    inner = Path(os.fsdecode(bytes(tmp_path / "images") + b"/caf\xe9"))
    write_split(inner, Path(os.fsdecode(bytes(tmp_path / "masks") + b"/caf\xe9")), ["c", "d"])
    assert "caf\\xe9: the folder name is not UTF-8" in refused(tmp_path)


def test_nothing_to_read(tmp_path):
    (tmp_path / "stuff").mkdir()
    assert "found no images and masks" in refused(tmp_path)
    assert folder.find(tmp_path) is None


# --- the config ----------------------------------------------------------------------------------


def test_find_spots_a_mask_suffix(tmp_path):
    write_image(tmp_path / "images" / "0001TP_1.png", W43, H43)
    write_mask(tmp_path / "masks" / "0001TP_1_L.png", labels_for(0, W43, H43))
    assert folder.find(tmp_path) == {"path": str(tmp_path), "mask_suffix": "_L"}


@pytest.mark.parametrize("key, value, says", [
    ("path", None, "data.source.path=DIR"),
    ("val_fraction", 1.0, "[0, 1)"),
    ("colors", [[0, 0, 300]], "0..255"),
    ("on_unreadable", "ignore", "skip or fail"),
    ("lists", {"trainval": "annotations/trainval.txt"}, "map train, val or test"),
    ("list_format", "names", "auto .* or name"),
])
def test_the_source_keys_are_checked_before_tensorflow(key, value, says):
    source = {"_target_": "seglab.data.folder.build", "path": "DIR", key: value}
    with pytest.raises(ConfigError, match=f"data.source.{key}=.*{says}".replace("[", r"\[").replace(")", r"\)")):
        check_source(source)



@pytest.mark.parametrize("source, says", [
    ({"val_fraction": "a tenth"}, r"data.source.val_fraction='a tenth' is not allowed: use a number"),
    ({"colors": "red"}, r"data.source.colors='red' is not allowed: use a list or null"),
    ({"pth": "DIR"}, r"data.source.pth is not a config key .*did you mean path\?"),
    ({"_target_": "seglab.data.nosuch.build"}, r"data.source._target_='seglab.data.nosuch.build' is not allowed"),
])
def test_any_source_is_checked_against_its_builders_signature(source, says):
    """seglab/config/sources.py: a source's keys and types are its `build` signature's (for every source module)."""
    with pytest.raises(ConfigError, match=says):
        check_source({"_target_": "seglab.data.folder.build", "path": "DIR", **source})


# --- the options data=pets reads the Oxford-IIIT Pet archives with (issue 31), each on its own ---------------


def seeded_names(names: list[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """docs/own-data.md's rule, written out: sorted names shuffled with the seed, the last share is val."""
    order = [sorted(names)[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n_val = max(1, round(len(order) * val_fraction))
    return order[:-n_val], order[-n_val:]


def test_lists_name_list_files_anywhere_and_masks_may_lie_deeper(tmp_path):
    """data.source.lists + a mask_dir two folders down; val is cut from the train list by the seeded rule, in name
    order whatever the list's order; test keeps the list's order."""
    names = [f"n{i}" for i in range(10)]
    write_split(tmp_path / "photos", tmp_path / "annotations" / "trimaps", names + ["t0", "t1"])
    (tmp_path / "annotations" / "trainval.txt").write_text("\n".join(reversed(names)) + "\n")
    (tmp_path / "annotations" / "test.txt").write_text("t1\nt0\n")
    lists = {"train": "annotations/trainval.txt", "test": "annotations/test.txt"}
    splits = build(tmp_path, image_dir="photos", mask_dir="annotations/trimaps", lists=lists, val_fraction=0.2, seed=3)
    train, val = seeded_names(names, 0.2, seed=3)
    assert splits.about["train"].names == [f"{n}.png" for n in train]
    assert splits.about["val"].names == [f"{n}.png" for n in val]
    assert splits.about["test"].names == ["t1.png", "t0.png"]
    np.testing.assert_array_equal(read(splits.test)[0][1], labels_for(11, W43, H43))


def test_a_list_lists_names_that_is_absent_or_empty_is_left_out_and_train_is_what_no_list_names(tmp_path, caplog):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b", "c", "d", "e"])
    (tmp_path / "test.txt").write_text("e\n")
    splits = build(tmp_path, lists={"train": "trainval.txt", "test": "test.txt"}, val_fraction=0.25)
    assert "data.source.lists.train" in caplog.text and "trainval.txt is not a file" in caplog.text
    train, val = seeded_names(["a", "b", "c", "d"], 0.25)
    assert splits.about["train"].names == [f"{n}.png" for n in train] and splits.about["val"].names == [f"{val[0]}.png"]
    assert splits.about["test"].names == ["e.png"]
    (tmp_path / "test.txt").write_text("# nothing held out\n")  # an empty test list: no test split
    assert build(tmp_path, lists={"train": "trainval.txt", "test": "test.txt"}).test is None


def test_list_format_name_reads_the_first_word_and_skips_comments(tmp_path):
    """Oxford-IIIT Pet's lists: `name class species breed` per line, `#` comment lines at the top."""
    write_split(tmp_path / "images", tmp_path / "masks", ["Abyssinian_1", "Abyssinian_10", "beagle_2"])
    (tmp_path / "train.txt").write_text("#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\nAbyssinian_10 1 1 1\n")
    (tmp_path / "val.txt").write_text("beagle_2 12 2 3\n")
    with pytest.raises(DataError, match="2 lines name no matching pair.*set data.source.list_format=name"):
        build(tmp_path)
    splits = build(tmp_path, list_format="name")
    assert splits.about["train"].names == ["Abyssinian_1.png", "Abyssinian_10.png"]
    assert splits.about["val"].names == ["beagle_2.png"]
    assert folder.find(tmp_path) == {"path": str(tmp_path), "list_format": "name"}


def test_label_map_with_ignore_index_null_maps_every_id_and_stops_on_one_it_does_not_name(tmp_path):
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        write_image(tmp_path / "images" / f"{name}.png", W43, H43, seed=i)
        write_mask(tmp_path / "masks" / f"{name}.png", labels_for(i, W43, H43) + 1)  # ids 1, 2, 3
    splits = build(tmp_path, label_map={1: 0, 2: 1, 3: 2}, ignore_index=None, val_fraction=0.25)
    for (_, mask), name in zip(read(splits.train), splits.about["train"].names):
        np.testing.assert_array_equal(mask, labels_for(names.index(name[0]), W43, H43))
    labels = labels_for(0, W43, H43) + 1
    labels[0, 0] = 7
    write_mask(tmp_path / "masks" / "a.png", labels)
    with pytest.raises(DataError, match=r"value outside 1\.\.3, the ids data\.source\.label_map names.*masks/a\.png"):
        build(tmp_path, label_map={1: 0, 2: 1, 3: 2}, ignore_index=None, val_fraction=0.25)
    check_source({"_target_": "seglab.data.folder.build", "path": "DIR", "label_map": {1: 0}, "ignore_index": None})


def test_the_split_shares_round_the_decimal_fraction_not_its_float():
    pairs = [(Path(f"{i:03d}.png"), Path(f"{i:03d}.png"), f"{i:03d}.png") for i in range(75)]
    assert 75 * 0.14 > 10.5  # the float product: rounded, it gave 11 validation images
    assert len(folder.seeded(pairs, 0.14, 0.0, 0)["val"]) == 10


def test_arrays_and_coco_carve_validation_first_and_test_from_what_follows():
    """seglab.data.carve, which data=arrays and data=coco cut their fractions with: disjoint parts covering every
    example; a test share leaves the seed's validation as it was; validation rounds as it always did (75 x 0.14 -> 11),
    test as `share` does (-> 10)."""
    alone, both = carve(75, {"val": 0.14}, seed=4), carve(75, {"val": 0.14, "test": 0.14}, seed=4)
    assert both["val"] == alone["val"] and len(both["val"]) == 11 and len(both["test"]) == 10
    assert sorted(both["train"] + both["val"] + both["test"]) == list(range(75))
    assert all(part == sorted(part) for part in both.values())
    assert carve(75, {"val": 0.14}, seed=5)["val"] != alone["val"]
    assert carve(2, {"val": 0.9}, seed=0)["train"] == []  # the caller refuses it, naming its files


def test_your_own_data_trains_without_augmentation_by_default(compose_cfg):
    """data=folder augments as data=arrays and data=tfrecord do, not at all, as Keras' fit (docs/own-data.md,
    "Augmentation"): flips cost 0.037 test mIoU on CamVid at 15 epochs, scale-crops and colour jitter 0.04-0.05 on
    generated frames at 8."""
    augment = {name: dict(compose_cfg(f"data={name}").data.augment) for name in ("folder", "arrays", "tfrecord")}
    assert augment["folder"] == {"hflip": False, "crop_min": 1.0, "brightness": 0.0, "contrast": 0.0}
    assert augment["folder"] == augment["arrays"] == augment["tfrecord"]


# --- the classes: from the config, or the classes file beside the data --------------------------


@pytest.mark.parametrize(("given", "num_classes", "class_names"), [
    ((), 3, ["void", "road", "sign"]),  # the file's, data.source.path alone
    (("data.num_classes=3",), 3, ["void", "road", "sign"]),
    (("data.class_names=[a,b,c]",), 3, ["a", "b", "c"]),  # the config's names before the file's
    (("data.num_classes=3", "data.class_names=[a,b,c]"), 3, ["a", "b", "c"]),
])
def test_a_classes_file_names_the_classes_the_config_leaves_null(tmp_path, given, num_classes, class_names):
    """conf/data/folder.yaml leaves num_classes and class_names null: validation fills them in the composed config
    (what the run then uses and logs) from the classes.csv in data.source.path, the config's own values first."""
    from seglab.config import schema

    (tmp_path / "classes.csv").write_text("name,r,g,b\nvoid,0,0,0\nroad,128,64,128\nsign,250,170,30\n")
    cfg = schema.compose(["data=folder", f"data.source.path={tmp_path}", *given])
    assert (cfg.data.num_classes, list(cfg.data.class_names)) == (num_classes, class_names)
    assert cfg.data.source.num_classes == num_classes  # the source checks the masks against the filled count


@pytest.mark.parametrize(("given", "num_classes", "class_names"), [
    (("data.num_classes=4",), 4, ["class_0", "class_1", "class_2", "class_3"]),
    (("data.class_names=[sky,road]",), 2, ["sky", "road"]),
])
def test_without_a_classes_file_the_count_or_the_names_give_the_other(tmp_path, given, num_classes, class_names):
    from seglab.config import schema

    cfg = schema.compose(["data=folder", f"data.source.path={tmp_path}", *given])
    assert (cfg.data.num_classes, list(cfg.data.class_names)) == (num_classes, class_names)


def test_classes_that_nothing_gives_or_that_disagree_with_the_file_are_one_line(tmp_path):
    from seglab.config import schema

    with pytest.raises(ConfigError, match=r"data\.num_classes is null: give the number of classes .*inspect DIR counts"):
        schema.compose(["data=folder", f"data.source.path={tmp_path}"])
    (tmp_path / "classes.yaml").write_text("[sky, road]\n")
    with pytest.raises(ConfigError, match=rf"data\.num_classes=3 is not allowed: the classes file in data\.source\.path={tmp_path} names 2 "
                                          r"classes \(sky, road\): give data\.num_classes=2"):
        schema.compose(["data=folder", f"data.source.path={tmp_path}", "data.num_classes=3"])

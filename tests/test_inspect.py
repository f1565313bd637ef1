"""`python -m seglab.data inspect PATH`: the report on real generated layouts, and that the command it prints trains."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from seglab import errors
from seglab.config import schema
from seglab.data import DataError, inspect
from tests.conftest import run_cli, run_module
from tests.test_folder import H21, H43, W21, W43, labels_for, write_image, write_mask, write_split

TINY_MODEL = ("model.depth=2", "model.base_filters=4", "trainer.epochs=1", "trainer.batch_size=4", "trainer.mask_samples=1")


def camvid_with_void(root, width=W21, height=H21):
    """train/ + trainannot/, val/ + valannot/, index masks with a void band (255), a classes.csv of names."""
    for split, names, offset in (("train", ["a", "b", "c", "d"], 0), ("val", ["e", "f"], 4)):
        for i, name in enumerate(names):
            write_image(root / split / f"{name}.png", width, height, seed=i + offset)
            labels = labels_for(i + offset, width, height).copy()
            labels[:2] = 255
            write_mask(root / f"{split}annot" / f"{name}.png", labels)
    (root / "classes.csv").write_text("name\nsky\nroad\ncar\n")


def test_inspect_reports_splits_sizes_classes_and_prints_the_overrides(tmp_path, capsys):
    camvid_with_void(tmp_path)
    inspect.main([str(tmp_path)])
    said = capsys.readouterr().out.splitlines()
    assert "  train: 4 images" in said and "  val: 2 images" in said
    assert f"  size {W21}x{H21} (aspect 2:1): 6 images" in said
    void_share = 100 * 2 / H21
    assert f"  label 255: {void_share:.2f} % of the pixels" in said
    assert any(line.startswith("  label 1 (road): ") for line in said)
    assert said[-2] == "train on it with:"
    command = shlex.split(said[-1])
    assert command[:4] == ["python", "-m", "seglab", "data=folder"]
    assert {f"data.source.path={tmp_path}", "data.num_classes=3", "data.class_names=[sky,road,car]",
            "data.ignore_index=255", "data.cache=memory"} <= set(command)
    assert "  decoded at 32x64 the 6 images take 0 MiB: under 2 GiB, so data.cache=memory keeps them" in said


def test_a_memory_cache_is_printed_only_for_what_fits_and_data_folder_streams_by_default(compose_cfg):
    """data=folder streams from disk unless asked (the design's rule); inspect asks for a memory cache where the decoded
    examples at the printed size take under MEMORY_CACHE_LIMIT: 1,000 frames of 480x360 do (0.96 GiB at 384x480),
    10,000 do not (and are streamed)."""
    assert compose_cfg("data=folder").data.cache is None
    for images, cache in ((1000, "memory"), (10000, None)):
        found = inspect.Found("folder", {"path": "DIR"}, images={"train": images}, pixels=inspect.Counter({0: 1, 1: 1}))
        found.sizes[(360, 480)] = images
        values = inspect.settings(found)
        assert values["cache"] == cache and values["image_size"] == [384, 480]
        assert ("data.cache=memory" in inspect.overrides(found, values)) == (cache == "memory")


def test_inspect_finds_the_colours_of_colour_coded_masks(tmp_path, capsys):
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"], encoding="RGB")
    inspect.main([str(tmp_path)])
    said = capsys.readouterr().out
    assert "data.source.colors=[[0,0,0],[128,64,128],[250,170,30]]" in said
    assert "label 1 colour (128, 64, 128): 33.33 % of the pixels" in said


def test_a_colour_outside_the_classes_file_is_the_line_training_gives_not_a_table_of_the_colours_found(tmp_path):
    """Colour masks, a classes.csv giving each class's colour, one mask with a colour the file lacks: inspect refuses
    with the source's line (the file, the colour); before, it dropped the file's table for the colours found, sorted,
    which bound the names to the wrong colours and then named a label past the classes in another file."""
    write_split(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"], encoding="RGB")
    (tmp_path / "classes.csv").write_text("name,r,g,b\nvoid,0,0,0\nroad,128,64,128\nsign,250,170,30\n")
    write_mask(tmp_path / "masks" / "b.png", labels_for(1, W43, H43), "RGB", colours=[(0, 0, 0), (1, 2, 3), (250, 170, 30)])
    with pytest.raises(DataError, match=r"masks/b\.png has \d+ pixels of colours not in the colour table, e\.g\. \(1, 2, 3\)"):
        inspect.main([str(tmp_path)])


def test_inspect_lists_problems_and_refuses_what_cannot_be_read(tmp_path, capsys):
    camvid_with_void(tmp_path)
    (tmp_path / "train" / "b.png").write_bytes(b"broken")
    inspect.main([str(tmp_path)])
    assert "  problem: skipped 1 of 6 image/mask pairs" in capsys.readouterr().out
    write_mask(tmp_path / "valannot" / "e.png", labels_for(0, 8, 8))
    with pytest.raises(DataError, match="cannot read it: 1 masks differ in size"):
        inspect.main([str(tmp_path)])
    assert "e.png (8x8, its image e.png 48x24)" in capsys.readouterr().out


def test_folders_of_images_and_masks_with_a_fault_get_the_fault_not_no_layout(tmp_path):
    """images/ + masks/ with a duplicate stem, or an image without a mask: inspect says that, in the line training
    gives; before, it said no layout reads the folder.  A folder without any images and masks still gets that."""
    write_split(tmp_path / "a" / "images", tmp_path / "a" / "masks", ["p0", "p1", "p2"])
    write_image(tmp_path / "a" / "images" / "p1.jpg", W21, H21)
    with pytest.raises(DataError, match=r"images/p1\.jpg and .*images/p1\.png have the same stem 'p1'"):
        inspect.main([str(tmp_path / "a")])
    write_split(tmp_path / "b" / "images", tmp_path / "b" / "masks", ["p0", "p1", "p2"])
    (tmp_path / "b" / "masks" / "p2.png").unlink()
    with pytest.raises(DataError, match=r"1 images in .*b/images have no mask in .*b/masks \(e\.g\. p2\.png\)"):
        inspect.main([str(tmp_path / "b")])
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="none of the data layouts"):
        inspect.main([str(tmp_path / "c")])


def test_inspect_reports_every_mask_the_pipeline_refuses_and_the_rest_of_the_data_set(tmp_path, capsys):
    """Colours outside the table in masks past the source's first-masks check (the 11th and 12th): each is a problem
    naming its file, counting goes on past them, the report is printed, no command; before, inspect stopped at the
    first one without any report."""
    from tests.test_folder import W43, H43

    names = [f"n{i:02d}" for i in range(12)]
    write_split(tmp_path / "train", tmp_path / "trainannot", names, encoding="RGB")
    write_split(tmp_path / "val", tmp_path / "valannot", ["v0"], encoding="RGB")
    (tmp_path / "classes.csv").write_text("name,r,g,b\nvoid,0,0,0\nroad,128,64,128\nsign,250,170,30\n")
    for name, stray in (("n10", (1, 2, 3)), ("n11", (9, 9, 9))):
        write_mask(tmp_path / "trainannot" / f"{name}.png", labels_for(0, W43, H43), "RGB", colours=[(0, 0, 0), (128, 64, 128), stray])
    with pytest.raises(DataError, match="cannot read it: 2 train example.s. refused"):
        inspect.main([str(tmp_path)])
    said = capsys.readouterr().out.splitlines()
    assert "  train: 10 images" in said and "  val: 1 images" in said
    problems = [line for line in said if line.startswith("  problem: ")]
    assert any("n10.png" in p and "(1, 2, 3)" in p for p in problems) and any("n11.png" in p and "(9, 9, 9)" in p for p in problems)
    assert not any(line.startswith("train on it with") for line in said)


def test_the_notes_one_hot_arrays_are_read_with_their_channels_as_the_classes(tmp_path, capsys):
    """The FCN notes' layout (np.save of uint8 images and one-hot masks), a class in no mask: inspect reads it and
    prints data.num_classes=C, the one-hot channels, a command the runner takes; before, the scan's num_classes was
    refused by the one-hot check and inspect could not read the design notes' own format."""
    from tests.test_arrays import CLASSES, SIDE

    rng = np.random.default_rng(0)
    for word, n in (("training", 8), ("validation", 3)):
        np.save(tmp_path / f"images_{word}.npy", rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8))
        np.save(tmp_path / f"seg_{word}.npy", np.eye(CLASSES, dtype=np.uint8)[rng.integers(0, CLASSES - 1, (n, SIDE, SIDE))])
    inspect.main([str(tmp_path)])
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"{tmp_path}: data=arrays reads it") and "  problems: none" in said
    command = shlex.split(said[-1])
    assert f"data.num_classes={CLASSES}" in command
    assert "data.class_names=[class_0,class_1,class_2]" in command
    schema.validate(schema.compose(command[3:]))


def test_a_coco_data_set_is_read_with_its_categories_as_the_classes(tmp_path, capsys):
    """COCO 2017's layout: inspect reads it with the categories' own class count and prints a command the runner
    takes; before, the scan's data.num_classes (SCAN_CLASSES) contradicted the categories and every COCO data set
    was refused."""
    from tests.test_coco import write_coco

    root = write_coco(tmp_path / "coco")
    inspect.main([str(root), f"data.source.cache_dir={tmp_path / 'cache'}"])
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"{root}: data=coco reads it") and "  problems: none" in said, said
    assert "  train: 4 images" in said and "  val: 2 images" in said
    command = shlex.split(said[-1])
    assert "data.num_classes=4" in command and "data.class_names=[background,person,dog,cat]" in command, command
    schema.validate(schema.compose(command[3:]))


def test_labels_past_the_classes_file_are_a_problem_naming_where_they_are(tmp_path, capsys):
    """A classes.csv naming fewer classes than the masks hold: each label past it is a problem (its pixels, the first
    file), and no command; before, inspect said "problems: none" and printed placeholder names over the file's."""
    camvid_with_void(tmp_path)
    labels = labels_for(1, W21, H21).copy()
    labels[-3:] = 3
    write_mask(tmp_path / "valannot" / "f.png", labels)
    with pytest.raises(DataError, match="labels past the 3 named classes"):
        inspect.main([str(tmp_path)])
    said = capsys.readouterr().out.splitlines()
    assert f"  problem: label 3 ({3 * W21} pixels; first in f.png, val split) is past the 3 classes named (sky, road, car): name it in " \
           "the classes file, or map it with data.source.label_map" in said
    assert not any(line.startswith("train on it with") for line in said)


def test_the_first_file_of_a_label_is_named_right_after_a_refused_mask(tmp_path, capsys):
    """A refused mask (an id the label_map does not name) before the first mask holding a label past the classes
    file's, both past the masks the source checks first: the problem names that mask, n10.png; before, refused masks
    were not counted and it named n09.png."""
    for split, names in (("train", [f"n{i:02d}" for i in range(12)]), ("val", ["e"])):
        for i, name in enumerate(names):
            write_image(tmp_path / split / f"{name}.png", W21, H21, seed=i)
            labels = labels_for(i % 3, W21, H21).copy()
            labels[:3] = {"n09": 7, "n10": 5}.get(name, labels[0, 0])
            write_mask(tmp_path / f"{split}annot" / f"{name}.png", labels)
    (tmp_path / "classes.csv").write_text("name\nsky\nroad\ncar\n")
    with pytest.raises(DataError):
        inspect.main([str(tmp_path), "data.source.label_map={0:0,1:1,2:2,5:3}", "data.source.ignore_index=null"])
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  problem: ")]
    assert any("n09.png" in line and "outside {0, 1, 2, 5}" in line for line in problems), problems
    assert any(line.startswith("  problem: label 3 (") and "first in n10.png, train split" in line for line in problems), problems


def test_a_class_name_the_runner_refuses_is_one_line_not_a_square_command(tmp_path, capsys):
    """A classes.csv name the schema refuses: inspect says so in one line, and prints no command; before, any refusal
    of the printed settings was taken for an old seglab without [height, width], and a square command was printed
    (the aspect dropped) that the runner then refused anyway."""
    camvid_with_void(tmp_path)
    (tmp_path / "classes.csv").write_text("name\nsky\nCar/Truck\nroad\n")
    with pytest.raises(DataError, match=r"the settings found would be refused: .*data.class_names"):
        inspect.main([str(tmp_path)])
    assert not any(line.startswith("train on it with") for line in capsys.readouterr().out.splitlines())


def test_more_classes_than_8_bits_keep_the_aspect_with_a_16_bit_void(tmp_path, capsys):
    """300 labels in 16-bit masks, no void: fit still pads, with 65535 as data.ignore_index (a label no class
    has); before, the printed ignore_index was null, fit was refused, and the frames were squeezed square unsaid."""
    for split in ("train", "val"):
        for i in range(2):
            write_image(tmp_path / split / "images" / f"{split}{i}.png", W21, H21, seed=i)
            labels = (np.arange(H21 * W21).reshape(H21, W21) % 150 + 150 * i).astype(np.uint16)
            write_mask(tmp_path / split / "masks" / f"{split}{i}.png", labels, "I;16")
    inspect.main([str(tmp_path)])
    command = shlex.split(capsys.readouterr().out.splitlines()[-1])
    assert {"data.num_classes=300", "data.ignore_index=65535", "data.resize=fit", "data.image_size=[32,64]"} <= set(command)


def test_inspect_knows_the_folder_layout_last_and_suggests_sizes_that_keep_the_aspect():
    names = [name for name, _ in inspect.candidates()]
    assert names[-1] == "folder"
    assert inspect.suggested_size(360, 480) == (384, 480)
    assert inspect.suggested_size(144, 192) == (160, 192)  # padded by fit, never shrunk
    assert inspect.suggested_size(1024, 2048) == (256, 512)



def test_inspect_write_puts_the_settings_in_a_data_option_for_config_dir(tmp_path, capsys):
    """`--write CONFIG_DIR/data/NAME.yaml`: the option composes over data=folder with the printed overrides' values."""
    from hydra import compose, initialize_config_dir

    from seglab.config import schema

    camvid_with_void(tmp_path / "data")
    option = tmp_path / "my_conf" / "data" / "mine.yaml"
    inspect.main([str(tmp_path / "data"), "--write", str(option)])
    said = capsys.readouterr().out.splitlines()
    assert said[-1] == f"python -m seglab --config-dir {tmp_path / 'my_conf'} data=mine"
    with initialize_config_dir(config_dir=schema.CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "data=mine"])
    schema.validate(cfg)
    assert cfg.data.name == "mine" and cfg.data.source.path == str(tmp_path / "data")
    assert cfg.data.num_classes == 3 and list(cfg.data.class_names) == ["sky", "road", "car"] and cfg.data.ignore_index == 255
    assert cfg.data.source._target_ == "seglab.data.folder.build"  # the rest from data=folder
    assert list(cfg.data.image_size) == [32, 64] and cfg.data.resize == "fit"  # 48x24 frames, each side up to 32s
    with pytest.raises(errors.UserError, match="give CONFIG_DIR/data/NAME.yaml"):
        inspect.main([str(tmp_path / "data"), "--write", str(tmp_path / "mine.yaml")])


@pytest.mark.slow
def test_the_printed_command_trains(tmp_path):
    data = tmp_path / "data"
    camvid_with_void(data)
    (data / "trainannot" / "a.png").unlink()
    write_mask(data / "trainannot" / "a.png", np.where(labels_for(0, W21, H21) == 2, 2, 0).astype(np.uint8), "P")
    done = run_module("seglab.data", "inspect", str(data), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    command = shlex.split(done.stdout.splitlines()[-1])
    assert command[:3] == ["python", "-m", "seglab"]
    uri = f"sqlite:///{tmp_path}/m.db"
    run_cli(*command[3:], *TINY_MODEL, f"tracking.uri={uri}", cwd=tmp_path)
    runs = MlflowClient(uri).search_runs(MlflowClient(uri).search_experiments()[0].experiment_id)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.params["data.source.path"] == str(data)


def binary_masks(root, values=(0, 255)):
    """images/ + masks/ (a seeded split): L masks holding `values` only, the object a band across the frame."""
    for i in range(8):
        write_image(root / "images" / f"x{i}.png", W21, H21, seed=i)
        labels = np.full((H21, W21), values[0], np.uint8)
        labels[4 + i % 3 : 12 + i % 3] = values[1]
        if len(values) > 2:
            labels[:, : 8 + i] = values[2]
        write_mask(root / "masks" / f"x{i}.png", labels)


@pytest.mark.parametrize("values, expected", [((0, 255), {0: 0, 255: 1}), ((0, 64, 128), {0: 0, 64: 1, 128: 2}),
                                              ((0, 128, 255), {0: 0, 128: 1})])
def test_binary_and_grey_level_masks_get_a_label_map_not_a_void(tmp_path, capsys, values, expected):
    """0/255 masks (the commonest of one's own): 255 is the object, not void (one class and void trained nothing);
    grey levels: each value a class, a 255 above them void.  Masks with labels 0..N and a void 255 keep it as void (the
    other tests).  The printed line is one shell word per override: bash would brace-expand {0:0,255:1} unquoted."""
    binary_masks(tmp_path, values)
    found = inspect.main([str(tmp_path)])
    assert inspect.label_map(found) == expected
    said = capsys.readouterr().out.splitlines()
    assert (f"  label 255 stays void (data.ignore_index); if it is a class, add 255:{len(expected)} to the label_map and 1 "
            "to data.num_classes" in said) == (255 in values and 255 not in expected)
    line = said[-1]
    assert subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"], capture_output=True, text=True).stdout.splitlines() == shlex.split(line)
    command = shlex.split(line)
    spelt = "{" + ",".join(f"{k}:{v}" for k, v in expected.items()) + "}"
    assert {f"data.source.label_map={spelt}", f"data.num_classes={len(expected)}"} <= set(command), command


@pytest.mark.slow
def test_the_command_printed_for_binary_masks_trains_both_classes(tmp_path):
    data = tmp_path / "data"
    binary_masks(data)
    done = run_module("seglab.data", "inspect", str(data), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    command = shlex.split(done.stdout.splitlines()[-1])
    uri = f"sqlite:///{tmp_path}/m.db"
    run_cli(*command[3:], *TINY_MODEL, f"tracking.uri={uri}", cwd=tmp_path)
    (run,) = MlflowClient(uri).search_runs(MlflowClient(uri).search_experiments()[0].experiment_id)
    params = run.data.params
    assert params["data.num_classes"] == "2" and (params["data.source.label_map.0"], params["data.source.label_map.255"]) == ("0", "1")
    # The object's pixels are labelled 1 and scored as the foreground class, not left out as void.
    saved = MlflowClient(uri).download_artifacts(run.info.run_id, "confusion_matrix.json", str(tmp_path))
    confusion = np.array(json.loads(Path(saved).read_text())["counts"])
    assert confusion.shape == (2, 2) and confusion[1].sum() > 0


def two_label_sets(root):
    """VOC's folders with SegmentationClass/ holding two label sets for the same images (SBCIV's element/ and defect/:
    bridge parts, 3 classes here, and corrosion, 2), lists in ImageSets/Segmentation."""
    names = [f"n{i}" for i in range(6)]
    for i, name in enumerate(names):
        write_image(root / "JPEGImages" / f"{name}.jpg", W21, H21, seed=i)
        write_mask(root / "SegmentationClass" / "element" / f"{name}.png", labels_for(i, W21, H21), "P")
        write_mask(root / "SegmentationClass" / "defect" / f"{name}.png", labels_for(i, W21, H21, classes=2), "P")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, part in (("train", names[:4]), ("val", names[4:5]), ("test", names[5:])):
        (lists / f"{split}.txt").write_text("\n".join(part) + "\n")


def test_a_mask_folder_of_several_label_sets_reads_one_and_names_the_others(tmp_path, capsys):
    two_label_sets(tmp_path)
    (tmp_path / "SegmentationClass" / ".DS_Store").write_bytes(b"\0")  # a file that is not a mask changes nothing
    inspect.main([str(tmp_path)])
    said = capsys.readouterr().out.splitlines()
    assert ("  note: SegmentationClass/ holds 2 label sets (defect, element): this reads SegmentationClass/defect; for "
            "another, inspect again with data.source.mask_dir=SegmentationClass/element") in said
    assert {"  train: 4 images", "  val: 1 images", "  test: 1 images"} <= set(said), said
    command = shlex.split(said[-1])
    assert {"data.source.image_dir=JPEGImages", "data.source.mask_dir=SegmentationClass/defect", "data.num_classes=2"} <= set(command)
    inspect.main([str(tmp_path), "data.source.mask_dir=SegmentationClass/element"])
    said = capsys.readouterr().out.splitlines()
    command = shlex.split(said[-1])
    assert {"data.source.mask_dir=SegmentationClass/element", "data.num_classes=3"} <= set(command), said
    assert any("this reads SegmentationClass/element; for another, inspect again with data.source.mask_dir=SegmentationClass/defect"
               in line for line in said)


def test_inspect_takes_data_source_settings_checked_as_the_runner_checks_them(tmp_path, capsys):
    """A layout find cannot guess (images in pics/, masks in lbl/) reads with the folders named; a key that is not a
    data.source key, or misspelt, is refused in one line before any file is read.  A path with a comma and brackets."""
    tmp_path = tmp_path / "my data,[1]"
    write_split(tmp_path / "pics", tmp_path / "lbl", [f"p{i}" for i in range(5)])
    with pytest.raises(DataError, match="none of the data layouts"):
        inspect.main([str(tmp_path)])
    inspect.main([str(tmp_path), "data.source.image_dir=pics", "data.source.mask_dir=lbl"])
    command = shlex.split(capsys.readouterr().out.splitlines()[-1])
    assert {"data.source.image_dir=pics", "data.source.mask_dir=lbl", "data.num_classes=3"} <= set(command)
    assert schema.compose(command[3:]).data.source.path == str(tmp_path)  # Hydra reads the path back whole
    done = run_module("seglab.data", "inspect", str(tmp_path), "data.num_classes=3", cwd=tmp_path)
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [
        "seglab.data: data.num_classes=3: inspect takes data.source.KEY=VALUE settings only (the rest it finds out), "
        "e.g. data.source.mask_dir=SegmentationClass/element"], done.stderr
    done = run_module("seglab.data", "inspect", str(tmp_path), "data.source.mask_dr=lbl", cwd=tmp_path)
    assert done.returncode != 0 and "did you mean mask_dir?" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("text", ["my data,[1]", "/a/b c", "x=y", "it's", "/d/a:b", "a\\b", "C:\\data\\", "${x}", "a{b}",
                                  "a'b\\'c", "ünï", "a|b", "null", "true", "1", "1.5", "~", "~/data", "a~b", "@x",
                                  "+1", "-", "road", "/data/set_1"])
def test_a_printed_string_is_read_back_by_hydra_as_it_was(text):
    """Paths and class names in the printed command: Hydra's grammar gives back the very string (a comma would start
    a sweep, brackets a list, `null` be None, `${x}` be interpolated)."""
    spelt = inspect.hydra_string(text)
    assert schema.compose(["data=folder", f"data.source.path={spelt}"], check=False).data.source.path == text
    assert (spelt == text) == (text in ("road", "/data/set_1"))

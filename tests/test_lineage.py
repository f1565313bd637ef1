"""Dataset lineage (seglab.data.lineage): digests follow the content, not its location; a run's
inputs show the datasets with their context, source and number of images."""

import json
import shutil

import numpy as np
from mlflow import MlflowClient
from PIL import Image

from seglab import tracking
from seglab.data import lineage, pets, shapes
from tests.test_pets import write_archive


def records(splits, data_name: str) -> dict[str, lineage.DatasetRecord]:
    return {name: lineage.describe(data_name, name, getattr(splits, name), splits.about.get(name))
            for name in ("train", "val", "test") if getattr(splits, name) is not None}


def shapes_records(**settings) -> dict[str, lineage.DatasetRecord]:
    args = {"image_size": 16, "train_size": 6, "val_size": 4, "test_size": 3, "seed": 0} | settings
    return records(shapes.build(**args), "shapes")


def test_shapes_digests_follow_the_generated_examples():
    first, again = shapes_records(), shapes_records()
    assert {n: r.digest for n, r in first.items()} == {n: r.digest for n, r in again.items()}
    assert len({r.digest for r in first.values()}) == 3  # three independent streams
    assert {n: r.num_images for n, r in first.items()} == {"train": 6, "val": 4, "test": 3}
    assert {n: r.context for n, r in first.items()} == {"train": "training", "val": "validation", "test": "test"}
    assert first["val"].name == "shapes-val" and first["val"].source["seed"] == 0
    other_seed = shapes_records(seed=1)
    assert all(other_seed[n].digest != first[n].digest for n in first)
    more = shapes_records(val_size=5)  # one more validation image: only that split changes
    assert more["val"].digest != first["val"].digest
    assert more["train"].digest == first["train"].digest and more["test"].digest == first["test"].digest


def test_folder_digests_change_with_one_pixel_of_one_mask_and_not_with_the_folders_place(tmp_path):
    root = tmp_path / "pets"
    write_archive(root)
    before = records(pets.build(kind="folder", path=str(root), val_percent=20), "pets")
    assert before["train"].source["path"] == str(root) and before["val"].num_images == 2
    assert pets.build(kind="folder", path=str(root), val_percent=20).about["val"].names[0].endswith(".jpg")

    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    after_move = records(pets.build(kind="folder", path=str(moved), val_percent=20), "pets")
    assert {n: r.digest for n, r in after_move.items()} == {n: r.digest for n, r in before.items()}

    test_name = (moved / "annotations" / "test.txt").read_text().split()[0]
    trimap_path = moved / "annotations" / "trimaps" / f"{test_name}.png"
    trimap = np.asarray(Image.open(trimap_path)).copy()
    trimap[0, 0] = 1 if trimap[0, 0] != 1 else 2
    Image.fromarray(trimap).save(trimap_path)
    changed = records(pets.build(kind="folder", path=str(moved), val_percent=20), "pets")
    assert changed["test"].digest != before["test"].digest
    assert changed["train"].digest == before["train"].digest and changed["val"].digest == before["val"].digest


def test_a_runs_inputs_show_each_split_with_context_source_and_size(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    splits = shapes.build(image_size=16, train_size=6, val_size=4, seed=3)
    with tracking.Run(uri, "lineage", "run", {}) as run:
        logged = lineage.log(run, "shapes", splits, ["train", "val"])
    inputs = MlflowClient(uri).get_run(run.run_id).inputs.dataset_inputs
    seen = {i.dataset.name: i for i in inputs}
    assert set(seen) == {"shapes-train", "shapes-val"}
    for record in logged:
        dataset = seen[record.name].dataset
        assert dataset.digest == record.digest
        assert json.loads(dataset.profile) == {"num_images": record.num_images}
        assert json.loads(dataset.source)["seed"] == 3 and dataset.source_type == "seglab"
        assert {t.key: t.value for t in seen[record.name].tags}["mlflow.data.context"] == record.context

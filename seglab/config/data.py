"""The data group's schemas (conf/data/*.yaml) and those of its sources (data.source, one per data set)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from seglab.config.check import require

CLASS_NAME = re.compile(r"[\w.\- ]+")


@dataclass
class AugmentConfig:
    hflip: bool = MISSING  # random horizontal flip
    crop_min: float = MISSING  # random scale-crop: crop side in [crop_min, 1] x image side, zoomed back; 1.0 = off
    brightness: float = MISSING  # random brightness shift in [-b, b] (images in [0, 1]); 0 = off
    contrast: float = MISSING  # random contrast factor in [1 - c, 1 + c]; 0 = off

    def __post_init__(self) -> None:
        require(
            0.0 < self.crop_min <= 1.0, "data.augment.crop_min", self.crop_min, "use a fraction in (0, 1] (1.0: no scale-crop)"
        )
        require(0.0 <= self.brightness <= 1.0, "data.augment.brightness", self.brightness, "use a shift in [0, 1] (0: off)")
        require(0.0 <= self.contrast < 1.0, "data.augment.contrast", self.contrast, "use a range in [0, 1) (0: off)")


@dataclass
class DataConfig:
    name: str = MISSING  # the data set's name: in the run's name and its experiment's (seglab-<name>)
    image_size: int = MISSING  # side of the square images the model sees (resized to it)
    num_classes: int = MISSING  # classes in the masks (checked against them)
    class_names: list[str] = MISSING  # one name per class, in label order (metrics and pictures use them)
    ignore_index: Optional[int] = MISSING  # label of pixels that count nowhere (e.g. COCO crowd regions)
    background_index: Optional[int] = MISSING  # label of the background class (shapes/pets: 1, COCO: 0)
    source: Any = MISSING  # `_target_` of a builder returning seglab.data.Splits
    augment: AugmentConfig = MISSING
    cache: Optional[str] = MISSING  # "memory", a file path prefix with a directory (e.g. ./cache/pets), or null
    shuffle_buffer: int = MISSING  # training examples tf.data shuffles among

    def __post_init__(self) -> None:
        require(self.image_size >= 8, "data.image_size", self.image_size, "use an integer >= 8")
        require(self.num_classes >= 2, "data.num_classes", self.num_classes, "use an integer >= 2")
        require(
            len(self.class_names) == self.num_classes,
            "data.class_names",
            list(self.class_names),
            f"give exactly data.num_classes={self.num_classes} names",
        )
        repeated = sorted({name for name in self.class_names if list(self.class_names).count(name) > 1})
        require(not repeated, "data.class_names", repeated,
                "give each class its own name (they name the per-class metrics, e.g. val_iou_<name>)")
        bad_names = [name for name in self.class_names if not CLASS_NAME.fullmatch(str(name))]
        require(
            not bad_names,
            "data.class_names",
            bad_names,
            "use letters, digits, '_', '-', '.' or spaces (each name becomes part of MLflow metric names, e.g. val_iou_<name>)",
        )
        require(
            self.ignore_index is None or not 0 <= self.ignore_index < self.num_classes,
            "data.ignore_index",
            self.ignore_index,
            f"use null or a label outside 0..{self.num_classes - 1} (e.g. 255), not a real class",
        )
        require(
            self.background_index is None or 0 <= self.background_index < self.num_classes,
            "data.background_index",
            self.background_index,
            f"use null or a class label in 0..{self.num_classes - 1}",
        )
        require(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "use an integer >= 1")
        # A bare word is a typo of `memory` far more often than a wanted file prefix in the working directory.
        require(
            self.cache in (None, "memory") or "/" in str(self.cache), "data.cache", self.cache,
            "use memory, null, or a file path prefix with a directory (e.g. ./cache/shapes, written as <prefix>-<split>-*)",
        )


@dataclass
class ShapesSourceConfig:
    _target_: str = MISSING
    image_size: int = MISSING  # side of the generated images (data.image_size)
    train_size: int = MISSING  # generated training images
    val_size: int = MISSING  # generated validation images
    test_size: int = MISSING  # 0: no test split (`python -m seglab.evaluate` then falls back to validation)
    max_objects: int = MISSING  # at most this many shapes per image
    boundary_width: int = MISSING  # pixels of the boundary class around each shape
    seed: int = MISSING  # the data set's own seed: the same images whatever the training seed

    def __post_init__(self) -> None:
        require(self.train_size >= 1, "data.source.train_size", self.train_size, "use an integer >= 1")
        require(self.val_size >= 1, "data.source.val_size", self.val_size, "use an integer >= 1")
        require(self.test_size >= 0, "data.source.test_size", self.test_size, "use an integer >= 0 (0: no test split)")
        require(self.max_objects >= 1, "data.source.max_objects", self.max_objects, "use an integer >= 1")
        require(self.boundary_width >= 1, "data.source.boundary_width", self.boundary_width, "use an integer >= 1")


PETS_KINDS = ("tfds", "folder")


@dataclass
class PetsSourceConfig:
    """Oxford-IIIT Pet from tensorflow-datasets (`kind: tfds`) or from the unpacked archives (`kind: folder`)."""

    _target_: str = MISSING
    kind: str = MISSING  # tfds (tensorflow-datasets) | folder (the unpacked archives)
    tfds_dir: str = MISSING  # kind=tfds: where tensorflow-datasets prepared the data set (docs/data.md)
    version: str = MISSING  # kind=tfds: oxford_iiit_pet version
    path: Optional[str] = MISSING  # kind=folder: DIR with images/ and annotations/trimaps/
    val_percent: int = MISSING  # validation = the last val_percent % of the (shuffled, for folder) train split
    split_seed: int = MISSING  # kind=folder: seed of the trainval shuffle before the split
    connect_timeout: float = MISSING  # seconds for the reachability check before a download
    num_classes: int = MISSING  # data.num_classes, to check the masks against
    deterministic: bool = MISSING  # the top-level deterministic: a reproducible file order

    def __post_init__(self) -> None:
        require(self.kind in PETS_KINDS, "data.source.kind", self.kind, f"choose one of {', '.join(PETS_KINDS)}")
        require(
            self.kind != "folder" or bool(self.path), "data.source.path", self.path,
            "kind=folder reads the unpacked archives: set data.source.path=DIR (DIR/images, DIR/annotations/trimaps)",
        )
        require(1 <= self.val_percent <= 50, "data.source.val_percent", self.val_percent, "use an integer from 1 to 50")
        require(
            self.connect_timeout > 0, "data.source.connect_timeout", self.connect_timeout, "use a positive number of seconds"
        )


@dataclass
class CocoCatSourceConfig:
    """COCO 2017 instances -> binary cat masks, converted once to sharded TFRecords."""

    _target_: str = MISSING
    path: str = MISSING  # holds annotations/instances_<split>.json and <split>/ image folders
    cache_dir: str = MISSING  # TFRecords, one subfolder per conversion setting
    category: str = MISSING  # COCO category name (its id is looked up in the annotation file)
    train_split: str = MISSING  # COCO's split the training images come from
    val_split: str = MISSING  # COCO's split the validation images come from
    negative_fraction: float = MISSING  # share of each converted split made of images without the category
    shards: int = MISSING  # TFRecord files per split (read in parallel)
    seed: int = MISSING  # which cat-free images are picked as negatives
    ignore_index: Optional[int] = MISSING  # data.ignore_index: the label crowd regions get
    num_classes: int = MISSING  # data.num_classes, to check the masks against
    deterministic: bool = MISSING  # the top-level deterministic: a reproducible file order

    def __post_init__(self) -> None:
        fraction = self.negative_fraction
        require(0.0 <= fraction < 1.0, "data.source.negative_fraction", fraction, "use a fraction in [0, 1)")
        require(self.shards >= 1, "data.source.shards", self.shards, "use an integer >= 1")
        require(
            self.ignore_index is None or 2 <= self.ignore_index <= 255, "data.ignore_index", self.ignore_index,
            "COCO masks are stored as 8-bit PNG: use null (crowd counts as cat) or a label in 2..255 (e.g. 255)",
        )


# The ConfigStore entries (GROUP/NAME) that the option YAMLs name in their defaults lists.
SCHEMAS = {
    "data/data_schema": DataConfig,
    "data/source/shapes_schema": ShapesSourceConfig,
    "data/source/pets_schema": PetsSourceConfig,
    "data/source/coco_cat_schema": CocoCatSourceConfig,
}

"""The data group's schemas (conf/data/*.yaml) and those of its sources (data.source, one per data set)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from seglab.config import sources
from seglab.config.check import ConfigError, require

CLASS_NAME = re.compile(r"[\w.\- ]+")
MIN_SIDE = 8  # the smallest image side any pipeline step or model is written for
# data.resize: how an image of another aspect becomes (H, W) (seglab/data/pipeline.py does each).
RESIZE_MODES = ("stretch", "fit", "crop")
SIZE_HELP = f"use one side (an integer >= {MIN_SIDE}) or [height, width] (e.g. [96, 128])"


def size_of(image_size: Any) -> tuple[int, int]:
    """`data.image_size` as (height, width): one side (an int) for a square, or [height, width].
    ConfigError, one line, for anything else (a list of another length, a side that is not a positive integer)."""
    sides = [image_size] if isinstance(image_size, int) else image_size
    try:
        sides = list(sides)
    except TypeError:
        sides = []
    ok = len(sides) in (1, 2) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides)
    require(ok and (len(sides) == 2 or isinstance(image_size, int)), "data.image_size", plain(image_size), SIZE_HELP)
    return (sides[0], sides[-1])


def size_text(image_size: Any) -> str:
    """The size as an override writes it: `64` for a square given as one side, `[48,64]` otherwise."""
    height, width = size_of(image_size)
    return str(height) if isinstance(image_size, int) else f"[{height},{width}]"


def plain(value: Any) -> Any:
    """A ListConfig as the list it holds, so a message shows `[32, 0]`, not an OmegaConf repr."""
    return list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else value


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
    image_size: Any = MISSING  # one side (square) or [height, width]: the size the model sees
    # null: filled before validation (sources.fill_classes): from class_names, or the source module's class_names
    # (folder: a classes file; coco: the categories).
    num_classes: Optional[int] = MISSING  # classes in the masks (checked against them)
    class_names: Optional[list[str]] = MISSING  # one name per class, in label order (metrics and pictures use them)
    ignore_index: Optional[int] = MISSING  # label of pixels that count nowhere (e.g. COCO crowd regions)
    background_index: Optional[int] = MISSING  # label of the background class (shapes/pets: 1, COCO: 0)
    source: Any = MISSING  # `_target_` of a builder returning seglab.data.Splits
    augment: AugmentConfig = MISSING
    cache: Optional[str] = MISSING  # "memory", a file path prefix with a directory (e.g. ./cache/pets), or null
    shuffle_buffer: int = MISSING  # training examples tf.data shuffles among
    # How an image of another aspect becomes image_size: stretch (squeezed), fit (aspect kept, padded with
    # ignore_index) or crop (aspect kept, a random crop in training, the centre in validation).  A default,
    # so that a data YAML of your own written before the key still composes.
    resize: str = "stretch"

    def __post_init__(self) -> None:
        require(min(size_of(self.image_size)) >= MIN_SIDE, "data.image_size", plain(self.image_size), SIZE_HELP)
        require(self.resize in RESIZE_MODES, "data.resize", self.resize, f"choose one of {', '.join(RESIZE_MODES)}")
        require(
            self.resize != "fit" or self.ignore_index is not None, "data.resize", self.resize,
            "fit pads each image to data.image_size and labels the padding data.ignore_index, which is null here: "
            "set data.ignore_index=255 (or use data.resize=stretch|crop)",
        )
        if self.num_classes is None:
            raise ConfigError("data.num_classes is null: give the number of classes in the masks (e.g. data.num_classes=3), "
                              "or their names (data.class_names=[...]), or put a classes.csv beside the data; "
                              "python -m seglab.data inspect DIR counts them and prints the overrides.")
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
        if isinstance(self.source, dict):  # a source without a dataclass: its builder's signature is its schema
            sources.check_source(self.source)
        require(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "use an integer >= 1")
        # A bare word is a typo of `memory` far more often than a wanted file prefix in the working directory.
        require(
            self.cache in (None, "memory") or "/" in str(self.cache), "data.cache", self.cache,
            "use memory, null, or a file path prefix with a directory (e.g. ./cache/shapes, written as <prefix>-<split>-*)",
        )


@dataclass
class ShapesSourceConfig:
    _target_: str = MISSING
    image_size: Any = MISSING  # data.image_size: the images are generated at it
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


# The ConfigStore entries (GROUP/NAME) that the option YAMLs name in their defaults lists.
SCHEMAS = {
    "data/data_schema": DataConfig,
    "data/source/shapes_schema": ShapesSourceConfig,
    "data/source/pets_schema": PetsSourceConfig,
}

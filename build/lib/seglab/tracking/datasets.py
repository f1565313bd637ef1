"""A seglab data split as an MLflow dataset (`mlflow.log_input`): its source as seglab describes it
(tfds name and version, folder, COCO annotation file, shapes seed), its content digest and its number
of images (the dataset's profile), so the run's Datasets panel shows what it was trained and scored on."""

from __future__ import annotations

import json
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset


class SeglabSource(DatasetSource):
    """Where a split comes from, as `seglab.data.Provenance.source` says (a plain dict)."""

    def __init__(self, description: dict[str, Any]):
        self.description = dict(description)

    @staticmethod
    def _get_source_type() -> str:
        return "seglab"

    def load(self, **kwargs):
        raise NotImplementedError("a seglab data source is read by its seglab.data builder, not by MLflow")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> SeglabSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return self.description

    @classmethod
    def from_dict(cls, source_dict: dict[str, Any]) -> SeglabSource:
        return cls(source_dict)


class ImageDataset(MetaDataset):
    """Metadata only (the images stay where they are), with the number of images as its profile."""

    def __init__(self, source: SeglabSource, name: str, digest: str, num_images: int):
        self.num_images = num_images
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, int]:
        return {"num_images": self.num_images}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def as_mlflow_dataset(record) -> ImageDataset:
    """A `seglab.data.lineage.DatasetRecord` as an MLflow dataset."""
    return ImageDataset(SeglabSource(record.source), record.name, record.digest, record.num_images)

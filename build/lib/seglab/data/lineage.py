"""Dataset lineage: what a run was trained and scored on, as one record per split (name, source,
number of images, content digest), logged with the run (`tracking.Run.log_dataset`).

The digest covers the content, not where it lies or how it was asked for: the bytes of the files a
split is read from, with their base names (a moved folder with the same files gives the same digest),
or, for a source without files (`data=shapes`), the decoded examples themselves.  When the files hold
more than the split (a tfds slice like `train[:90%]` reads the same files as `train[90%:]`), the
selection is digested too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from seglab.data import Provenance

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # MLflow's dataset contexts per split
DIGEST_CHARS = 16
CHUNK_BYTES = 1 << 20


@dataclass
class DatasetRecord:
    name: str  # e.g. shapes-val
    source: dict
    num_images: int
    digest: str
    context: str  # training | validation | test


def describe(data_name: str, split: str, dataset, about: Provenance | None) -> DatasetRecord:
    """The record of one split (`dataset`: the source's unbatched `(image, mask)` split)."""
    about = about or Provenance({"kind": data_name})
    digest = hashlib.sha256(about.selection.encode() + b"\0")
    count = int(dataset.cardinality())
    if about.files is not None:
        for path in about.files:
            digest.update(Path(path).name.encode() + b"\0")
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    digest.update(chunk)
    else:
        seen = 0
        for image, mask in dataset.as_numpy_iterator():
            for array in (image, mask):
                digest.update(f"{array.dtype}{array.shape}".encode())
                digest.update(array.tobytes())
            seen += 1
        count = seen
    if count < 0:  # unknown cardinality: count once
        count = int(dataset.reduce(0, lambda n, _: n + 1))
    return DatasetRecord(f"{data_name}-{split}", about.source, count, digest.hexdigest()[:DIGEST_CHARS], CONTEXTS[split])


def log(run, data_name: str, splits, names: list[str]) -> list[DatasetRecord]:
    """Describe the named splits ("train", "val", "test") and log them to `run` (a tracking.Run)."""
    records = [describe(data_name, name, getattr(splits, name), splits.about.get(name)) for name in names]
    for record in records:
        run.log_dataset(record)
    return records

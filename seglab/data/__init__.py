"""Data sources (one module each) and the shared tf.data pipeline.

A source builder returns `Splits`: unbatched `tf.data.Dataset`s of `(image, mask)` pairs, the
image uint8 RGB `(H, W, 3)` of any size, the mask integer labels `(H, W)`.  `pipeline.make`
turns a split into the batches the model trains on.
"""

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class Splits:
    train: Any  # tf.data.Dataset
    val: Any
    test: Optional[Any] = None

"""The tf.data pipeline shared by every data set: resize, normalise, cache, shuffle, augment, batch.

Images are delivered as float32 RGB in [0, 1]; each model applies its own encoder preprocessing
inside its graph, so a saved model takes raw images.  Masks are resized with nearest-neighbour
only (bilinear would invent fractional labels) and delivered as int32 `(H, W)` label maps.
Randomness is stateless and a function of (seed, epoch, position): the training stream is one
sub-stream per epoch, each shuffled and augmented with seeds derived from its epoch number, so
epoch 7 gives the same batches whether it follows epoch 6 in the same process or starts a run
resumed from a checkpoint (seglab/engine/lifecycle.py).  With `deterministic` the stream is the same in
every run.
"""

from __future__ import annotations


import tensorflow as tf
from tensorflow.python.framework import random_seed

from seglab.config import trainer as trainer_schema

AUTOTUNE = tf.data.AUTOTUNE


def resize_image(image, image_size: int):
    """uint8 RGB of any size -> uint8 (S, S, 3), bilinear.  Still uint8: what is cached takes a
    quarter of the memory float32 would."""
    image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), method="bilinear")
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def resize_mask(mask, image_size: int):
    """Integer labels (H, W) or (H, W, 1) -> int32 (S, S), nearest-neighbour only (no invented labels)."""
    mask = tf.cast(mask, tf.int32)
    if mask.shape.rank == 2:
        mask = mask[..., None]
    return tf.image.resize(mask, (image_size, image_size), method="nearest")[..., 0]


def prepare(image, mask, image_size: int):
    return resize_image(image, image_size), resize_mask(mask, image_size)


def to_unit_range(image):
    """uint8 RGB -> float32 RGB in [0, 1], the convention every model takes."""
    return tf.cast(image, tf.float32) / 255.0


def augment(image, mask, seed, hflip: bool = True, crop_min: float = 1.0, brightness: float = 0.0, contrast: float = 0.0):
    """Random transforms, stateless and seeded; the geometric ones move image and mask together.

    Scale-crop picks a square window whose side is uniform in [crop_min, 1] x the image side, at a
    uniform position, and zooms it back to full size (image bilinear, mask nearest-neighbour).
    Brightness and contrast change the image only, then clip it to [0, 1].
    """
    if hflip:
        flip = tf.random.stateless_uniform([], seed=seed) < 0.5
        image = tf.where(flip, tf.reverse(image, axis=[1]), image)
        mask = tf.where(flip, tf.reverse(mask, axis=[1]), mask)
    if crop_min < 1.0:
        side = tf.random.stateless_uniform([], seed=_subseed(seed, 1), minval=crop_min, maxval=1.0)
        top, left = tf.unstack(tf.random.stateless_uniform([2], seed=_subseed(seed, 2)) * (1.0 - side))
        box = tf.stack([top, left, top + side, left + side])[None]
        size = tf.shape(image)[:2]
        image = tf.image.crop_and_resize(image[None], box, [0], size, method="bilinear")[0]
        mask = tf.image.crop_and_resize(tf.cast(mask, tf.float32)[None, ..., None], box, [0], size, method="nearest")
        mask = tf.cast(mask[0, ..., 0], tf.int32)
    if brightness > 0:
        image = tf.image.stateless_random_brightness(image, brightness, seed=_subseed(seed, 3))
    if contrast > 0:
        image = tf.image.stateless_random_contrast(image, 1.0 - contrast, 1.0 + contrast, seed=_subseed(seed, 4))
    if brightness > 0 or contrast > 0:
        image = tf.clip_by_value(image, 0.0, 1.0)
    return image, mask


def _subseed(seed, index: int):
    """An independent stateless seed per transform, derived from the element's seed."""
    return tf.random.experimental.stateless_fold_in(seed, index)


def make(
    dataset: tf.data.Dataset,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int,
    deterministic: bool,
    augment_options: dict | None = None,
    cache: str | None = "memory",
    cache_name: str = "split",
    shuffle_buffer: int = 1024,
    epochs: range = range(1),
) -> tf.data.Dataset:
    """Batches of (image float32 (B, S, S, 3), mask int32 (B, S, S)) from an unbatched split.

    Training: the batches of `epochs` one after the other (`steps_per_epoch` batches each), for
    `fit(..., steps_per_epoch=..., initial_epoch=epochs.start)`; evaluation: one pass."""
    ds = dataset.map(
        lambda image, mask: prepare(image, mask, image_size), num_parallel_calls=AUTOTUNE, deterministic=deterministic
    )
    if cache == "memory":
        ds = ds.cache()
    elif cache:
        ds = ds.cache(f"{cache}-{cache_name}")  # cache_name: seglab.data.cache_name, unique to the data
    if training:
        options = dict(augment_options or {})
        prepared = ds
        ds = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(
            lambda epoch: _epoch(prepared, epoch, seed, shuffle_buffer, batch_size, deterministic, options)
        )
    else:
        ds = ds.map(lambda image, mask: (to_unit_range(image), mask), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        ds = ds.batch(batch_size)
    ds = ds.prefetch(AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = deterministic
    return ds.with_options(opts)


def _epoch(ds, epoch, seed: int, shuffle_buffer: int, batch_size: int, deterministic: bool, options: dict) -> tf.data.Dataset:
    """One epoch's batches; its order and augmentation depend only on (seed, epoch), not on how
    many epochs this process has run before."""
    epoch_key = tf.stack([tf.constant(seed, tf.int64), epoch])
    shuffle_seed = tf.random.stateless_uniform([], seed=epoch_key, minval=None, maxval=None, dtype=tf.int64)
    ds = _shuffle(ds, shuffle_buffer, shuffle_seed)
    return ds.enumerate().map(
        lambda index, pair: augment(to_unit_range(pair[0]), pair[1], _subseed(epoch_key, index), **options),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    ).batch(batch_size)


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Batches per epoch of a split of `examples` elements (the last one may be partial)."""
    return trainer_schema.batches_per_epoch(examples, batch_size)


def count(dataset: tf.data.Dataset) -> int:
    """Elements of a split: its cardinality, or counted once when tf.data does not know it."""
    known = int(dataset.cardinality())
    if known >= 0:
        return known
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _shuffle(ds: tf.data.Dataset, buffer: int, seed: tf.Tensor) -> tf.data.Dataset:
    """`ds.shuffle` with a seed tensor.  TensorFlow's `random_seed.get_seed` compares (global seed, op
    seed) with (0, 0); with a global seed of 0 (`seed=0`) that evaluates the seed tensor as a Python bool
    and raises OperatorNotAllowedInGraphError.  For this op a global seed of 0 is then taken as
    TensorFlow's default graph seed: the order still depends only on the seeds."""

    graph = tf.compat.v1.get_default_graph()
    if graph.seed != 0:
        return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
    graph.seed = random_seed.DEFAULT_GRAPH_SEED
    try:
        return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
    finally:
        graph.seed = 0

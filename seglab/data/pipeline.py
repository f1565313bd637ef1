"""The tf.data pipeline shared by every data set: resize, normalise, cache, shuffle, augment, batch.

Resizing to `data.image_size` (H, W) follows `data.resize`: `stretch` squeezes the image to it; `fit` keeps
the aspect, scales the image to fit inside and pads it (0 in the image, `ignore_index` in the mask); `crop`
keeps the aspect, scales the image to cover (H, W) and cuts a window: random in training (stateless, from
the example's seed, as the augmentation), the centre in evaluation.

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
from seglab.config.data import size_of

AUTOTUNE = tf.data.AUTOTUNE
CROP_STREAM = 5  # data.resize=crop's window: its own stream of an example's seed (augment uses 1 to 4)


def resize_image(image, image_size):
    """uint8 RGB of any size -> uint8 (H, W, 3) at `image_size` (one side, or (H, W), tensors allowed), bilinear.
    Still uint8: what is cached takes a quarter of the memory float32 would."""
    image = tf.image.resize(tf.cast(image, tf.float32), _sides(image_size), method="bilinear")
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def resize_mask(mask, image_size):
    """Integer labels (H, W) or (H, W, 1) -> int32 at `image_size`, nearest-neighbour only (no invented labels)."""
    mask = tf.cast(mask, tf.int32)
    if mask.shape.rank == 2:
        mask = mask[..., None]
    return tf.image.resize(mask, _sides(image_size), method="nearest")[..., 0]


def _sides(image_size):
    """(H, W) of a data.image_size, or a size tensor as it is (fit and crop compute the size in the graph)."""
    return image_size if tf.is_tensor(image_size) else size_of(image_size)


def scaled_size(shape, image_size, cover: bool):
    """The size (h, w) an image of `shape` (its first two sides) takes at the one scale that fits it inside
    `image_size` (cover=False: data.resize=fit) or makes it cover `image_size` (cover=True: crop); aspect kept."""
    height, width = size_of(image_size)
    sides = tf.cast(shape[:2], tf.float32)
    ratios = tf.constant([height, width], tf.float32) / sides
    scale = tf.reduce_max(ratios) if cover else tf.reduce_min(ratios)
    size = tf.cast(tf.round(sides * scale), tf.int32)
    # Rounding must not leave a side short of (cover) or past (fit) the target.
    target = tf.constant([height, width], tf.int32)
    return tf.maximum(size, target) if cover else tf.clip_by_value(size, 1, target)


def fit(image, mask, image_size, ignore_index: int):
    """data.resize=fit: the whole image at the scale that fits it inside (H, W), centred; the border is 0 in
    the image and `ignore_index` in the mask, so it counts in neither the loss nor the metrics."""
    height, width = size_of(image_size)
    size = scaled_size(tf.shape(image), image_size, cover=False)
    image, mask = resize_image(image, size), resize_mask(mask, size)
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    padding = [[top, height - size[0] - top], [left, width - size[1] - left]]
    image = tf.pad(image, padding + [[0, 0]])
    mask = tf.pad(mask, padding, constant_values=ignore_index)
    return tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(mask, (height, width))


def cover(image, mask, image_size):
    """data.resize=crop, before the crop: the image at the scale that makes it cover (H, W), aspect kept."""
    size = scaled_size(tf.shape(image), image_size, cover=True)
    return resize_image(image, size), resize_mask(mask, size)


def crop(image, mask, image_size, seed=None):
    """A (H, W) window of an image that covers it: at a uniform position drawn from `seed` (training), or
    the centre (seed None: validation)."""
    height, width = size_of(image_size)
    room = tf.shape(image)[:2] - tf.constant([height, width])
    if seed is None:
        top, left = room[0] // 2, room[1] // 2
    else:
        top, left = tf.unstack(tf.random.stateless_uniform([2], seed=seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
                               % (room + 1))
    image, mask = image[top : top + height, left : left + width], mask[top : top + height, left : left + width]
    return tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(mask, (height, width))


def prepare(image, mask, image_size, resize: str = "stretch", ignore_index: int | None = None, training: bool = False):
    """One example at the model's size as data.resize says (stretch, fit, crop), image uint8, mask int32.  A
    training example in crop mode stays at its covering size: its random window is cut per epoch (`_epoch`)."""
    if resize == "fit":
        return fit(image, mask, image_size, ignore_index)
    if resize in ("crop", "cover"):  # cover: the whole covering image (seglab.evaluate reads it in windows)
        image, mask = cover(image, mask, image_size)
        return (image, mask) if training or resize == "cover" else crop(image, mask, image_size)
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
    resize: str = "stretch",
    ignore_index: int | None = None,
) -> tf.data.Dataset:
    """Batches of (image float32 (B, H, W, 3), mask int32 (B, H, W)) from an unbatched split, (H, W) being
    `image_size` (one side or (H, W)) reached as `resize` says (data.resize; fit pads the mask with `ignore_index`).

    Training: the batches of `epochs` one after the other (`steps_per_epoch` batches each), for
    `fit(..., steps_per_epoch=..., initial_epoch=epochs.start)`; evaluation: one pass."""
    ds = dataset.map(
        lambda image, mask: prepare(image, mask, image_size, resize, ignore_index, training),
        num_parallel_calls=AUTOTUNE, deterministic=deterministic,
    )
    if cache == "memory":
        ds = ds.cache()
    elif cache:
        ds = ds.cache(f"{cache}-{cache_name}")  # cache_name: seglab.data.cache_name, unique to the data
    if training:
        options = dict(augment_options or {})
        prepared, window = ds, size_of(image_size) if resize == "crop" else None
        ds = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(
            lambda epoch: _epoch(prepared, epoch, seed, shuffle_buffer, batch_size, deterministic, options, window)
        )
    else:
        ds = _unit_range_batches(ds, batch_size, deterministic)
    ds = ds.prefetch(AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = deterministic
    # The source's decode map and `prepare` may run as one function per example (one hand-over between threads
    # instead of two); its gain was within the noise of docs/own-data.md's "Throughput" runs.
    opts.experimental_optimization.map_fusion = True
    # No autotuner: every AUTOTUNE map runs on all of the machine's cores, and prefetch grows its buffer itself.
    # With the autotuner on, a quarter of the passes over 1,000 PNGs ran on one core of two, for tf.data's
    # own pipelines as for seglab's (docs/own-data.md, "Throughput"); without it none did, at about the same CPU
    # per image.
    opts.autotune.enabled = False
    return ds.with_options(opts)


def _unit_range_batches(ds, batch_size: int, deterministic: bool) -> tf.data.Dataset:
    """Batches of uint8 examples converted to [0, 1] a batch at a time: the same values as per example, at one
    op per batch instead of one per example."""
    return ds.batch(batch_size).map(lambda images, masks: (to_unit_range(images), masks), num_parallel_calls=AUTOTUNE,
                                    deterministic=deterministic)


def randomises(options: dict) -> bool:
    """Whether `augment` with these options changes anything (all off: the benchmark's and a plain reading)."""
    return bool(options.get("hflip", True) or options.get("crop_min", 1.0) < 1.0 or options.get("brightness", 0.0) > 0
                or options.get("contrast", 0.0) > 0)


def _epoch(ds, epoch, seed: int, shuffle_buffer: int, batch_size: int, deterministic: bool, options: dict,
           window: tuple[int, int] | None = None) -> tf.data.Dataset:
    """One epoch's batches; its order, crop `window`s (data.resize=crop) and augmentation depend only on
    (seed, epoch), not on how many epochs this process has run before."""
    epoch_key = tf.stack([tf.constant(seed, tf.int64), epoch])
    shuffle_seed = tf.random.stateless_uniform([], seed=epoch_key, minval=None, maxval=None, dtype=tf.int64)
    ds = _shuffle(ds, shuffle_buffer, shuffle_seed)
    if window is None and not randomises(options):
        return _unit_range_batches(ds, batch_size, deterministic)  # nothing random per example: no per-example map

    def example(index, pair):
        image, mask, element_seed = pair[0], pair[1], _subseed(epoch_key, index)
        if window is not None:
            image, mask = crop(image, mask, window, _subseed(element_seed, CROP_STREAM))
        return augment(to_unit_range(image), mask, element_seed, **options)

    return ds.enumerate().map(example, num_parallel_calls=AUTOTUNE, deterministic=deterministic).batch(batch_size)


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

"""The tf.data pipeline: resizing, normalisation, augmentation that moves image and mask together."""

import numpy as np
import tensorflow as tf

from seglab.data import pipeline


def dataset(count=4, size=20, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, size=(count, size, size), dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, masks)), images, masks


def batches(ds, **kw):
    args = dict(image_size=32, batch_size=2, training=False, seed=0, deterministic=True)
    args.update(kw)
    return list(pipeline.make(ds, **args).as_numpy_iterator())


def test_resize_keeps_masks_integer_labels_and_images_in_unit_range():
    ds, _, masks = dataset(size=17)
    for image, mask in batches(ds, image_size=40):
        assert image.shape[1:] == (40, 40, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert mask.dtype == np.int32 and mask.shape[1:] == (40, 40)
        # nearest-neighbour: only labels that exist in the source, never a blend of two (e.g. 1 from 0 and 2)
        assert set(np.unique(mask)) <= set(np.unique(masks))


def test_bilinear_mask_resizing_would_have_been_caught():
    """A two-label mask (0 and 2) resized bilinearly gains 1s at the edge; ours must not."""
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[:, :, 4:] = 2
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((1, 8, 8, 3), np.uint8), mask))
    (_, resized), = batches(ds, image_size=13, batch_size=1)
    assert set(np.unique(resized)) == {0, 2}
    blended = tf.image.resize(mask[..., None].astype(np.float32), (13, 13), method="bilinear").numpy()
    assert not set(np.unique(np.round(blended))) <= {0, 2}


def test_flip_moves_image_and_mask_together():
    size = 16
    image = np.zeros((1, size, size, 3), np.uint8)
    image[0, :, : size // 4] = 255  # a white stripe on the left ...
    mask = np.zeros((1, size, size), np.uint8)
    mask[0, :, : size // 4] = 1  # ... labelled 1
    ds = tf.data.Dataset.from_tensor_slices((np.repeat(image, 32, 0), np.repeat(mask, 32, 0)))
    out = batches(ds, image_size=size, batch_size=32, training=True, augment_options={"hflip": True}, shuffle_buffer=1)
    images, masks = out[0]
    flipped = images[:, 0, -1, 0] > 0.5
    assert 0 < flipped.sum() < 32  # some flipped, some not
    np.testing.assert_array_equal(images[..., 0] > 0.5, masks == 1)


def test_training_stream_is_deterministic_reshuffles_each_epoch_and_resumes_at_any_epoch():
    ds, _, _ = dataset(count=12)
    make = lambda epochs: pipeline.make(ds, image_size=20, batch_size=12, training=True, seed=5, deterministic=True,
                                        augment_options={"hflip": True}, epochs=epochs)
    a1, a2 = [m for _, m in make(range(2)).as_numpy_iterator()]
    b1, b2 = [m for _, m in make(range(2)).as_numpy_iterator()]
    (resumed,) = [m for _, m in make(range(1, 2)).as_numpy_iterator()]
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    np.testing.assert_array_equal(a2, resumed)  # epoch 2 alone (a resumed run) is epoch 2 of the whole stream
    assert not np.array_equal(a1, a2)  # epoch 2 is a different order/augmentation


def test_file_cache_is_reused_for_the_same_data_and_never_for_other_data(tmp_path, compose_cfg):
    from seglab.data import Provenance, cache_name

    ds, _, _ = dataset()
    about = Provenance({"kind": "shapes"})  # generated data: keyed by its config alone
    name = cache_name(compose_cfg().data, "train", about)
    first = batches(ds, cache=str(tmp_path / "cache"), cache_name=name)
    assert list(tmp_path.glob(f"cache-{name}*"))
    other_images = tf.data.Dataset.from_tensor_slices((np.full((4, 20, 20, 3), 200, np.uint8), np.zeros((4, 20, 20), np.uint8)))
    again = batches(other_images, cache=str(tmp_path / "cache"), cache_name=name)
    np.testing.assert_array_equal(first[0][0], again[0][0])  # same name: tf.data reads the cache (by design)
    # ... so the name must change with anything that changes the data (files: tests/test_cache.py):
    assert cache_name(compose_cfg().data, "train", about) == name
    for override in ("data.source.train_size=10", "data.image_size=32", "data=pets", "data.source.seed=1"):
        assert cache_name(compose_cfg(override).data, "train", about) != name, override
    assert cache_name(compose_cfg().data, "val", about) != name


def striped(count=32, size=32):
    """Vertical stripes 4 px wide: white where the mask is 1, black where it is 0."""
    image = np.zeros((count, size, size, 3), np.uint8)
    mask = np.zeros((count, size, size), np.uint8)
    for start in range(0, size, 8):
        image[:, :, start : start + 4] = 255
        mask[:, :, start : start + 4] = 1
    return tf.data.Dataset.from_tensor_slices((image, mask))


def test_scale_crop_zooms_image_and_mask_together():
    out = batches(striped(), image_size=32, batch_size=32, training=True, shuffle_buffer=1,
                  augment_options={"hflip": False, "crop_min": 0.5})
    images, masks = out[0]
    assert set(np.unique(masks)) == {0, 1}
    # wherever the image is clearly white or black, the mask says the same (blends only at stripe edges)
    white, black = images[..., 0] > 0.9, images[..., 0] < 0.1
    assert (masks[white] == 1).all() and (masks[black] == 0).all()
    assert (white | black).mean() > 0.6
    stripes_per_row = (np.diff(masks[:, 0, :], axis=1) == 1).sum(axis=1)
    assert stripes_per_row.min() < stripes_per_row.max()  # zoomed by different amounts


def test_brightness_and_contrast_change_images_not_masks():
    ds, _, masks = dataset(count=8, size=16)
    plain = batches(ds, image_size=16, batch_size=8, training=True, shuffle_buffer=1, augment_options={"hflip": False})
    jittered = batches(ds, image_size=16, batch_size=8, training=True, shuffle_buffer=1,
                       augment_options={"hflip": False, "brightness": 0.3, "contrast": 0.3})
    (plain_images, plain_masks), (images, jittered_masks) = plain[0], jittered[0]
    np.testing.assert_array_equal(plain_masks, jittered_masks)
    assert not np.allclose(plain_images, images)
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_training_stream_builds_with_a_global_seed_of_zero():
    """`seed=0` seeds TensorFlow globally with 0, where TensorFlow's seed check of a shuffle with a seed
    tensor used to raise OperatorNotAllowedInGraphError (found when a test before this one had seeded 0)."""
    ds, _, _ = dataset(count=6)
    tf.random.set_seed(0)
    try:
        first = [b[1] for b in batches(ds, training=True, seed=0, epochs=range(2))]
        again = [b[1] for b in batches(ds, training=True, seed=0, epochs=range(2))]
    finally:
        tf.random.set_seed(None)
    assert len(first) == 6 and all(np.array_equal(a, b) for a, b in zip(first, again))


def test_training_without_augmentation_gives_each_example_once_as_evaluation_reads_it_in_a_seeded_order():
    """Augmentation off takes the path without a per-example map (a batch converted at once): the same float
    values as evaluation's, every example once, shuffled, and the same order again for the same seed."""
    ds, _, _ = dataset(count=8)
    off = {"hflip": False, "crop_min": 1.0, "brightness": 0.0, "contrast": 0.0}
    assert not pipeline.randomises(off) and pipeline.randomises({"hflip": True})
    train = batches(ds, training=True, seed=3, augment_options=off, batch_size=8)
    (images, masks), = batches(ds, batch_size=8)
    (shuffled, shuffled_masks), = train
    assert shuffled.dtype == np.float32 and shuffled.max() <= 1.0
    order = [next(j for j in range(8) if np.array_equal(shuffled[i], images[j])) for i in range(8)]
    assert sorted(order) == list(range(8)) and order != list(range(8))
    np.testing.assert_array_equal(shuffled_masks, masks[order])
    (again, _), = batches(ds, training=True, seed=3, augment_options=off, batch_size=8)
    np.testing.assert_array_equal(again, shuffled)


def test_pipelines_run_without_tf_datas_autotuner():
    """Training and evaluation pipelines turn tf.data's autotuner off: with it on, a quarter of the passes over
    1,000 PNGs ran on one core of two (docs/own-data.md, "Throughput"); AUTOTUNE then means every core."""
    ds, _, _ = dataset()
    for training in (True, False):
        made = pipeline.make(ds, image_size=32, batch_size=2, training=training, seed=0, deterministic=True)
        assert made.options().autotune.enabled is False, training


def test_training_orders_are_uniform_and_independent_between_epochs_and_seeds():
    """Each epoch's order is one uniform random permutation, drawn afresh per (seed, epoch): over 40 epochs of 306
    examples (SBCIV's training split) the rank correlation of an order with the source's and with the next epoch's is
    0 on average (one order's: 0 +- 1/sqrt(305) = 0.057, so the mean of 40 is 0 +- 0.009) and no order is far from
    it, and the first epoch differs between seeds.  A shuffle whose buffer held part of the split, or one order for
    every epoch, fails here (docs/own-data.md, "the order of the batches")."""
    from scipy import stats

    n, epochs, seeds = 306, 4, range(42, 52)
    ds = tf.data.Dataset.range(n).map(lambda i: (tf.zeros([1, 1, 3], tf.uint8), tf.fill([1, 1], tf.cast(i, tf.int32))))
    orders = {seed: np.concatenate([m[:, 0, 0] for _, m in batches(ds, image_size=1, batch_size=8, training=True, seed=seed,
                                                                        epochs=range(epochs), cache="memory")]).reshape(epochs, n)
              for seed in seeds}
    assert all(sorted(order) == list(range(n)) for each in orders.values() for order in each)
    with_source = [stats.spearmanr(order, np.arange(n))[0] for each in orders.values() for order in each]
    with_next = [stats.spearmanr(np.argsort(each[e]), np.argsort(each[e + 1]))[0] for each in orders.values() for e in range(epochs - 1)]
    assert abs(np.mean(with_source)) < 0.04 and abs(np.mean(with_next)) < 0.04, (np.mean(with_source), np.mean(with_next))
    assert max(map(abs, with_source + with_next)) < 0.3
    assert len({tuple(each[0]) for each in orders.values()}) == len(seeds)

"""The built-in synthetic data set: seeded, disjoint splits, trimap-like class balance."""

import numpy as np

from seglab.data import shapes


def test_same_seed_same_images_other_seed_other_images():
    a_img, a_mask = shapes.generate(6, 32, seed=3)
    b_img, b_mask = shapes.generate(6, 32, seed=3)
    c_img, _ = shapes.generate(6, 32, seed=4)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)


def test_arrays_have_pet_trimap_shapes_and_labels():
    images, masks = shapes.generate(5, 48, seed=0)
    assert images.shape == (5, 48, 48, 3) and images.dtype == np.uint8
    assert masks.shape == (5, 48, 48) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {shapes.OBJECT, shapes.BACKGROUND, shapes.BOUNDARY}


def test_class_balance_is_imbalanced_like_trimaps():
    _, masks = shapes.generate(200, 64, seed=0)
    share = np.bincount(masks.ravel(), minlength=3) / masks.size
    assert share[shapes.BACKGROUND] > share[shapes.OBJECT] > share[shapes.BOUNDARY]
    assert 0.02 < share[shapes.BOUNDARY] < 0.15  # rare, but present
    assert 0.08 < share[shapes.OBJECT] < 0.4
    # every image has an object with a boundary around it
    assert all((m == shapes.BOUNDARY).any() and (m == shapes.OBJECT).any() for m in masks)


def test_boundary_separates_object_from_background():
    _, masks = shapes.generate(20, 48, seed=1, boundary_width=2)
    for m in masks:
        obj, bg = m == shapes.OBJECT, m == shapes.BACKGROUND
        # no object pixel is 4-adjacent to a background pixel: the boundary band is in between
        assert not (obj[:, :-1] & bg[:, 1:]).any() and not (obj[:-1, :] & bg[1:, :]).any()
        assert not (bg[:, :-1] & obj[:, 1:]).any() and not (bg[:-1, :] & obj[1:, :]).any()


def test_boundary_width_is_configurable():
    _, thin = shapes.generate(30, 64, seed=2, boundary_width=1)
    _, thick = shapes.generate(30, 64, seed=2, boundary_width=4)
    assert (thick == shapes.BOUNDARY).mean() > 2 * (thin == shapes.BOUNDARY).mean()


def test_build_returns_disjoint_train_and_val_splits():
    splits = shapes.build(image_size=32, train_size=7, val_size=5, seed=0)
    assert int(splits.train.cardinality()) == 7 and int(splits.val.cardinality()) == 5
    train = np.stack([img.numpy() for img, _ in splits.train])
    val = np.stack([img.numpy() for img, _ in splits.val])
    assert not any(np.array_equal(v, t) for v in val for t in train)

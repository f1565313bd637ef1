"""The U-Net builder: shapes, parameter count from the paper's architecture, learning, saving."""

import keras
import numpy as np
import pytest

from tests.conftest import build_model


def conv(cin, cout, k=3):
    return k * k * cin * cout + cout


def expected_params(num_classes, base, depth):
    """Counted from the paper's figure 1 (two 3x3 convs per level, 2x2 up-convs, 1x1 classifier)."""
    total, cin = 0, 3
    for level in range(depth + 1):
        width = base * 2**level
        total += conv(cin, width) + conv(width, width)
        cin = width
    for level in reversed(range(depth)):
        width = base * 2**level
        total += conv(2 * width, width, k=2)  # up-conv: 2x2, from 2*width channels to width
        total += conv(2 * width, width) + conv(width, width)
    return total + conv(base, num_classes, k=1)


@pytest.mark.parametrize("num_classes,size,depth", [(2, 32, 2), (3, 64, 3), (3, 48, 4)])
def test_output_is_logits_per_class_at_input_size(num_classes, size, depth):
    model = build_model("unet", num_classes, size, base_filters=4, depth=depth, batch_norm=False)  # the paper's
    out = model(np.zeros((2, size, size, 3), np.float32))
    assert out.shape == (2, size, size, num_classes) and out.dtype == "float32"
    assert model.count_params() == expected_params(num_classes, 4, depth)


def test_paper_widths_are_one_setting_away():
    model = build_model("unet", 2, 64, base_filters=64, depth=4, batch_norm=False)
    assert model.count_params() == expected_params(2, 64, 4)
    assert model.get_layer("bottom_conv2").filters == 1024


def test_batch_norm_and_dropout_options():
    with_bn = build_model("unet", 3, 32, base_filters=4, depth=2, batch_norm=True, dropout=0.3)
    names = [layer.name for layer in with_bn.layers]
    assert any("bn" in n for n in names)
    assert [n for n in names if "dropout" in n] == ["down1_dropout", "bottom_dropout"]  # two deepest levels
    no_dropout = build_model("unet", 3, 32, base_filters=4, depth=2, dropout=0.0)
    assert not any("dropout" in layer.name for layer in no_dropout.layers)


def test_a_few_steps_reduce_the_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 32, 32, 3)).astype(np.float32)
    y = (x[..., 0] > 0.5).astype(np.int32)
    model = build_model("unet", 2, 32, base_filters=4, depth=2, dropout=0.0)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=60, batch_size=8, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0]


def test_saved_model_reloads_and_predicts_the_same(tmp_path):
    model = build_model("unet", 3, 32, base_filters=4, depth=2)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))

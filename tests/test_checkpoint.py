"""One-file training state, written atomically, restoring weights and optimizer exactly."""

from pathlib import Path

import keras
import numpy as np
import pytest

from seglab import atomic, checkpoint
from tests.conftest import build_model


def compiled_model(seed):
    keras.utils.set_random_seed(seed)
    model = build_model("unet", 2, 16, base_filters=2, depth=1, dropout=0.0)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


DATA = (np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32), np.zeros((4, 16, 16), np.int32))


def test_state_round_trip_continues_training_identically(tmp_path):
    a = compiled_model(0)
    a.fit(*DATA, epochs=2, verbose=0, shuffle=False)
    checkpoint.save_state(tmp_path / "s.npz", a, checkpoint.TrainingState(epoch=2, best=0.5))
    b = compiled_model(1)  # different initial weights, fresh optimizer
    state = checkpoint.load_state(tmp_path / "s.npz", b)
    assert state == checkpoint.TrainingState(epoch=2, best=0.5)
    for va, vb in zip(a.optimizer.variables, b.optimizer.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    a.fit(*DATA, epochs=1, verbose=0, shuffle=False)
    b.fit(*DATA, epochs=1, verbose=0, shuffle=False)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_failed_write_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path):
    model = compiled_model(0)
    path = tmp_path / "s.npz"
    checkpoint.save_state(path, model, checkpoint.TrainingState(epoch=1, best=0.1))
    before = path.read_bytes()

    def crash(tmp):
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write(path, crash)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]


def test_saved_model_has_no_training_state_and_loads_without_seglab(tmp_path):
    model = compiled_model(0)
    checkpoint.save_model(tmp_path / "best.keras", model)
    loaded = keras.models.load_model(tmp_path / "best.keras")
    assert getattr(loaded, "optimizer", None) is None and not loaded.compiled
    np.testing.assert_array_equal(loaded.predict(DATA[0], verbose=0), model.predict(DATA[0], verbose=0))

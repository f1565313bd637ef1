"""One-file training state, written atomically, restoring weights and optimizer exactly."""

from pathlib import Path

import keras
import numpy as np
import pytest

from seglab.engine import checkpoint
from seglab.util import atomic
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


def test_disk_full_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    """RLIMIT_FSIZE makes a write fail with EFBIG as a full disk fails with ENOSPC (Python ignores SIGXFSZ)."""
    import resource

    model = compiled_model(0)
    path = tmp_path / "last.state.npz"
    checkpoint.save_state(path, model, checkpoint.TrainingState(epoch=1, best=0.1))
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, hard))
    try:
        with pytest.raises(checkpoint.CheckpointError, match="cannot write the checkpoint .*last.state.npz.*previous last.state.npz is intact"):
            checkpoint.save_state(path, model, checkpoint.TrainingState(epoch=2, best=0.2))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.state.npz"]


def test_unwritable_directory_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="/proc/seglab-no/last.state.npz"):
        checkpoint.save_state("/proc/seglab-no/last.state.npz", compiled_model(0), checkpoint.TrainingState(epoch=1, best=0.1))


@pytest.mark.slow
def test_training_on_a_full_disk_fails_in_one_line_and_the_run_is_failed(tmp_path):
    """A real training whose checkpoint directory is a 16 KiB tmpfs: the first checkpoint does not fit."""
    import subprocess

    from mlflow import MlflowClient

    from tests.conftest import TINY, run_cli

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        done = run_cli(*TINY, "trainer.epochs=1", f"trainer.checkpoint_dir={disk}", "tracking.log_model=false",
                       f"tracking.uri=sqlite:///{tmp_path}/m.db", cwd=tmp_path, check=False)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert last.startswith("seglab: cannot write the checkpoint") and str(disk) in last, last
    (run,) = MlflowClient(f"sqlite:///{tmp_path}/m.db").search_runs(["1"])  # seglab-shapes: the first experiment after Default
    assert run.info.status == "FAILED" and "cannot write the checkpoint" in run.data.tags["error"]

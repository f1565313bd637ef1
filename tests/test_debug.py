"""The debug presets (conf/debug/): +debug=fast runs one tiny epoch end to end, +debug=overfit fits a batch."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY, run_cli


def _only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_presets_compose_to_what_they_promise(compose_cfg):
    fast = compose_cfg("+debug=fast")
    assert (fast.trainer.epochs, fast.trainer.limit_batches, fast.tracking.log_model, fast.data.cache) == (1, 2, False, None)
    assert fast.tracking.experiment == "debug-shapes"
    overfit = compose_cfg("+debug=overfit", "model=fcn8")
    assert overfit.trainer.overfit_batches == 2 and overfit.model.dropout == 0.0
    assert not overfit.data.augment.hflip and overfit.data.augment.crop_min == 1.0
    profile = compose_cfg("+debug=profile")
    assert list(profile.trainer.profile_batches) == [4, 8] and profile.trainer.limit_batches >= 8


@pytest.mark.slow
def test_fast_runs_one_epoch_of_two_batches_and_logs_no_model(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sizes = [o for o in TINY if not o.startswith("trainer.epochs=")]  # the preset's one epoch
    run_cli("+debug=fast", *sizes, f"tracking.uri={uri}", cwd=tmp_path)
    client, run = _only_run(uri, "debug-shapes")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mean_iou")] == [0]
    assert not [a for a in client.list_artifacts(run.info.run_id) if a.path == "model"]  # tracking.log_model=false
    assert "seglab.model_step" not in run.data.tags
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} >= {"checkpoints/best.keras"}


@pytest.mark.slow
def test_overfit_drives_the_training_loss_far_down(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli(
        "+debug=overfit", "data.image_size=32", "data.source.train_size=16", "data.source.val_size=8", "model.depth=2",
        "model.base_filters=16", "model.batch_norm=true", "trainer.batch_size=8", "trainer.overfit_batches=1",
        "trainer.epochs=50", "optimizer.learning_rate=0.01", f"tracking.uri={uri}",
        "trainer.mask_samples=0", "trainer.train_inference_images=0",  # no per-epoch extras: 50 epochs of one step
        cwd=tmp_path,
    )
    client, run = _only_run(uri, "debug-shapes")
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == 50
    assert losses[-1] < losses[0] / 10, losses
    # (val mIoU is not checked: after 50 steps batch norm's moving statistics, used for validation, still lag)


@pytest.mark.slow
def test_profile_traces_the_chosen_steps_into_the_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sizes = [o for o in TINY if not o.startswith("trainer.epochs=")]
    done = run_cli("+debug=profile", *sizes, "trainer.profile_batches=[2,3]", f"tracking.uri={uri}", cwd=tmp_path)
    assert "profiled training steps 2-3" in done.stdout + done.stderr
    client, run = _only_run(uri, "debug-shapes")
    assert run.info.status == "FINISHED" and run.data.metrics["profile_seconds_per_step"] > 0

    def files(path):
        for item in client.list_artifacts(run.info.run_id, path):
            yield from files(item.path) if item.is_dir else [item]

    traces = [a for a in files("profile") if a.path.endswith(".xplane.pb")]
    assert len(traces) == 1 and traces[0].file_size > 1000  # TensorBoard's Profile tab reads this file

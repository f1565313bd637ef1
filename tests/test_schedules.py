"""Optimizers and learning-rate schedules (the `optimizer` and `scheduler` groups): every step's rate
against the schedule's published formula, written out here independently of seglab/schedules.py,
and the rate a real training logs each epoch."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hydra.utils import instantiate
from mlflow import MlflowClient

from tests.conftest import TINY, run_cli

BASE, STEPS, EPOCHS = 0.01, 7, 6


def expected_rate(name: str, step: int, warmup_epochs: float, **params) -> float:
    """The formulas, by step (0-based): linear warm-up (Goyal et al. 2017), then the decay over the rest."""
    warmup = round(warmup_epochs * STEPS)
    if step < warmup:
        return BASE * (step + 1) / warmup
    progress = min((step - warmup) / max(STEPS * EPOCHS - warmup, 1), 1.0)
    low = params.get("min_learning_rate", 0.0)
    if name == "constant":
        return BASE
    if name == "cosine":  # SGDR eq. 5, one cycle
        return low + (BASE - low) * (1 + math.cos(math.pi * progress)) / 2
    if name == "poly":  # DeepLab / MMSegmentation PolyLR
        return (BASE - low) * (1 - progress) ** params["power"] + low
    if name == "step":  # torch StepLR, by epoch
        return BASE * params["gamma"] ** (step // STEPS // params["step_epochs"])
    raise AssertionError(name)


@pytest.mark.parametrize("warmup_epochs", [0, 1.5])
@pytest.mark.parametrize(
    "name,overrides",
    [
        ("constant", {}),
        ("cosine", {"min_learning_rate": 1e-4}),
        ("poly", {"power": 0.9, "min_learning_rate": 1e-4}),
        ("step", {"step_epochs": 2, "gamma": 0.5}),
    ],
)
def test_every_step_follows_the_formula(compose_cfg, name, overrides, warmup_epochs):
    cfg = compose_cfg(f"scheduler={name}", f"scheduler.warmup_epochs={warmup_epochs}",
                      *(f"scheduler.{k}={v}" for k, v in overrides.items()))
    schedule = instantiate(cfg.scheduler, base_learning_rate=BASE, steps_per_epoch=STEPS, epochs=EPOCHS)
    got = np.array([float(schedule(step)) for step in range(STEPS * EPOCHS + 3)])  # a few steps past the end too
    want = np.array([expected_rate(name, s, warmup_epochs, **overrides) for s in range(STEPS * EPOCHS + 3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    if warmup_epochs:
        assert got[0] < got[round(warmup_epochs * STEPS) - 1] <= BASE + 1e-9  # rises to the base rate


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_takes_the_schedule_and_its_settings(compose_cfg, optimizer):
    from seglab.engine import train

    cfg = compose_cfg(f"optimizer={optimizer}", "scheduler=cosine", f"trainer.epochs={EPOCHS}")
    built = train.build_optimizer(cfg, steps_per_epoch=STEPS)
    assert isinstance(built._learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    assert built._learning_rate.total_steps == STEPS * EPOCHS
    assert not built.use_ema and built.gradient_accumulation_steps is None  # the YAMLs' defaults: off
    assert float(built.learning_rate) == pytest.approx(cfg.optimizer.learning_rate)  # step 0 of cosine: the base
    if optimizer == "sgd":
        assert built.momentum == cfg.optimizer.momentum and built.nesterov == cfg.optimizer.nesterov
    if cfg.optimizer.weight_decay is not None:
        assert built.weight_decay == pytest.approx(cfg.optimizer.weight_decay)


def test_ema_and_accumulation_reach_the_optimizer_and_the_schedule_counts_updates(compose_cfg):
    """With k batches per update the optimizer's `iterations` (where the schedule is evaluated) counts
    updates, so the schedule runs over STEPS / k updates an epoch and still ends at the run's end."""
    from seglab.engine import train

    cfg = compose_cfg("scheduler=cosine", f"trainer.epochs={EPOCHS}", "optimizer.ema=true", "optimizer.ema_momentum=0.9",
                      "trainer.gradient_accumulation_steps=4")
    built = train.build_optimizer(cfg, steps_per_epoch=STEPS)
    assert built.use_ema and built.ema_momentum == 0.9 and built.gradient_accumulation_steps == 4
    assert built._learning_rate.total_steps == pytest.approx(STEPS * EPOCHS / 4)
    assert train.build_optimizer(compose_cfg("trainer.gradient_accumulation_steps=1"), STEPS).gradient_accumulation_steps is None


@pytest.mark.slow
def test_training_logs_each_epochs_learning_rate(tmp_path):
    """TINY: 48 training images, batch 8 -> 6 steps an epoch; 3 epochs with one of warm-up."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_cli(*TINY, "trainer.epochs=3", "trainer.mask_samples=0", "tracking.log_model=false", "optimizer=sgd",
            "scheduler=poly", "scheduler.warmup_epochs=1", f"tracking.uri={uri}", cwd=tmp_path)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seglab-shapes").experiment_id])
    logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "learning_rate")]
    steps, lr, power, low = 6, 0.01, 0.9, 1e-4  # conf/optimizer/sgd.yaml, conf/scheduler/poly.yaml
    first_steps = [epoch * steps for epoch in range(3)]
    want = [lr * 1 / steps] + [(lr - low) * (1 - (s - steps) / (3 * steps - steps)) ** power + low for s in first_steps[1:]]
    assert [s for s, _ in logged] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in logged], want, rtol=1e-5)
    assert run.data.params["scheduler._target_"] == "seglab.schedules.Poly" and run.data.params["optimizer.momentum"] == "0.9"

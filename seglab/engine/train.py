"""The experiment as a story: open the run, set up model, data and loss, fit, finish (the chosen
model scored and logged, seglab.engine.finish).  Returns the metric a Hydra sweeper optimises
(`optimize_metric`, best epoch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seglab import console, losses, metrics, tracking
from seglab.config import trainer as trainer_schema
from seglab.data import EMPTY_SPLIT_FIX, DataError, batches_of, lineage, pipeline, statistics
from seglab.engine import (callbacks, claim, debug, determinism, distribute, evaluate, finish, lifecycle, multi_worker, owner,
                           runtime)
from seglab.tracking import tags

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Train the configured experiment in an MLflow run; the best epoch's `optimize_metric`."""
    # First: a multi-worker strategy configures collective ops, which TensorFlow allows only before it starts.
    strategy = distribute.make(cfg.trainer.strategy)
    device = runtime.setup(cfg.seed, cfg.deterministic, cfg.trainer.precision)
    out = Path(HydraConfig.get().runtime.output_dir)
    found, mlrun = open_run(cfg, device, out / cfg.trainer.checkpoint_dir)
    # The data before the run opens, every training and validation label checked: masks that contradict
    # data.num_classes leave nothing in the store.  Once it is open, any failure (model, training) ends it FAILED.
    data = read_data(cfg)
    with mlrun, distribute.checkpoint_directory(out / cfg.trainer.checkpoint_dir) as checkpoint_dir:
        if found.run_id is None:  # first, so that a run failing below still shows the config that failed
            log_config(cfg, mlrun)
        setup = set_up(cfg, strategy, mlrun, data)
        checkpointer = callbacks.Checkpointer(checkpoint_dir, monitor=cfg.optimize_metric,
                                              upload=mlrun.log_checkpoint, upload_every=cfg.trainer.checkpoint_every,
                                              run_id=mlrun.run_id)
        first_epoch = lifecycle.initial_epoch(found, cfg.tracking.uri, setup.model, checkpointer, cfg.trainer.checkpoint_dir)
        if setup.multi_worker:  # the chief alone looked for a run to continue
            first_epoch = multi_worker.from_chief(setup.strategy, setup.model, checkpointer, first_epoch)
        if found.run_id is not None:  # once its checkpoint fits: a refused resume leaves the run's config as it was
            log_config(cfg, mlrun)
        fitted = fit(cfg, mlrun, setup, checkpointer, first_epoch, out / "profile")
        log_training(cfg, mlrun, checkpointer, fitted)

        chosen = finish.choose(cfg.tracking.log_model, setup.model, checkpointer, fitted.epochs)
        val = finish.Split("val", fitted.val_ds, list(cfg.data.class_names), finish.image_names(setup.splits, "val"),
                           ordered=bool(cfg.deterministic))
        publish = finish.Publish(cfg.tracking.log_model, fitted.samples[0][:1], cfg.tracking.register_as, cfg.data.name,
                                 cfg.data.resize)
        finish.finish(mlrun, chosen, val, cfg.trainer.worst_samples, publish if cfg.tracking.log_model else None)
        if cfg.trainer.score_test:
            evaluate.score_test(cfg, mlrun, chosen, setup.splits)
        log.info("best %s %.4f at epoch %d; %s", cfg.optimize_metric, checkpointer.best, checkpointer.best_epoch + 1,
                 f"checkpoints in {checkpointer.directory}" if distribute.is_chief()
                 else "the chief keeps the checkpoints and logs the MLflow run")
        if distribute.is_chief():
            for line in console.run_address(cfg.tracking.uri, mlrun.experiment_id, mlrun.run_id):
                log.info(line)
    return checkpointer.best


def log_config(cfg: DictConfig, mlrun) -> None:
    # The thread counts too: bit-identity holds between runs with the same ones (seglab.check_determinism compares them).
    mlrun.log_params({**tracking.flatten(OmegaConf.to_container(cfg, resolve=True)), **runtime.thread_params()})
    mlrun.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def open_run(cfg: DictConfig, device: str, checkpoint_dir: Path) -> tuple[lifecycle.Plan, Any]:
    """The run this training logs to (a `tracking.Run` in the hands of its owner, seglab.engine.owner, not yet
    open; on a multi-worker cluster's other workers a run that logs nothing) and the plan to continue an earlier
    one (trainer.resume: a killed run of the same experiment, docs/resume.md).  A resume with nothing left to
    train and a `checkpoint_dir` of another run are refused here, before the store is written to; the owner
    claims the run it continues when it opens it."""
    # In a sweep, tracking.parent_run_id (set by seglab.sweep) makes this run a child of the sweep's run.
    identity = {**lifecycle.tags(cfg), **claim.owner_tags(), **_runtime_tags(device)}
    # Only the chief of a multi-worker cluster looks for a run to resume, logs and keeps checkpoints
    # (seglab/engine/distribute.py); the other workers take its state in multi_worker.from_chief.
    if not distribute.is_chief():
        return lifecycle.Plan(None), tracking.NoOpRun()
    timeout_s = 60 * cfg.trainer.heartbeat_timeout_min
    found = lifecycle.plan(cfg.trainer.resume, cfg.tracking.uri, cfg.tracking.experiment, identity[tags.RUN_KEY],
                           cfg.tracking.parent_run_id, timeout_s)
    lifecycle.refuse_other_architecture(found, cfg)
    lifecycle.refuse_nothing_left(found, cfg.trainer.epochs)
    lifecycle.refuse_other_owner(checkpoint_dir, found.run_id)
    lifecycle.refuse_checkpoint_gone(found, cfg.tracking.uri, Path(cfg.trainer.checkpoint_dir), checkpoint_dir)
    mlrun = tracking.Run(cfg.tracking.uri, cfg.tracking.experiment, lifecycle.run_name(cfg), identity, cfg.tracking.parent_run_id)
    return found, owner.RunOwner(mlrun, found.record, timeout_s, f"trainer.resume={cfg.trainer.resume}")


@dataclass
class Setup:
    """What the run trains, built from the config."""

    model: keras.Model  # compiled
    splits: Any  # the data source's splits (seglab.data)
    loss: keras.losses.Loss
    train_images: int
    steps_per_epoch: int
    val_ds: tf.data.Dataset  # the validation batches, before +debug limits them
    strategy: Any  # the tf.distribute strategy the model was built in
    multi_worker: bool  # a multi-worker cluster: the workers take the chief's state and train in seglab's own loop


@dataclass
class Data:
    """The data source's splits and the training split's label counts (counted once: the label check,
    the warning about absent classes and the class-balancing weights all read them)."""

    splits: Any
    counts: statistics.ClassCounts


def read_data(cfg: DictConfig) -> Data:
    """The configured splits, every mask of the training and validation splits (and test's, for trainer.score_test)
    read once and checked against data.num_classes (a DataError names the largest stray label); a class without
    training pixels is a warning."""
    data = cfg.data
    splits = instantiate(data.source)
    if cfg.trainer.score_test and splits.test is None:
        raise DataError(f"trainer.score_test=true, but data={data.name} has no test split: give it one (a test folder or "
                        "list beside train's, test files; or a seeded share where there are none: data.source.test_fraction=0.2), or "
                        "set trainer.score_test=false")
    counted = {}
    for split in ("train", "val", "test") if cfg.trainer.score_test else ("train", "val"):
        counted[split] = statistics.class_counts(batches_of(cfg, getattr(splits, split), split, cache=False),
                                                 data.num_classes, data.ignore_index)
        about = splits.about.get(split)  # where a stray label is: by name only in a fixed order
        statistics.refuse_outside(counted[split], data.num_classes, data.ignore_index, split,
                                  names=about.names if about and cfg.deterministic else None,
                                  files=about.files if about else None)
        if not counted[split].images:
            raise DataError(f"data={data.name}: the {split} split holds no image: {EMPTY_SPLIT_FIX}")
    trainer_schema.check_batches(cfg.trainer, counted["train"].images, "counted")
    absent = statistics.absent_classes(counted["train"], list(data.class_names))
    if absent:
        log.warning(absent)
    return Data(splits, counted["train"])


def set_up(cfg: DictConfig, strategy, mlrun, data: Data) -> Setup:
    """The model and the loss, compiled under the strategy for the data's training batches; the run's input
    datasets, the loss's computed class weights and the model's size logged to `mlrun`."""
    with strategy.scope():  # model, optimizer and metric variables are mirrored over the replicas
        model = instantiate(cfg.model, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size)
    splits = data.splits
    lineage.log(mlrun, cfg.data.name, splits, ["train", "val"])  # the run's input datasets: source, size, content digest
    val_ds = batches_of(cfg, splits.val, "val", about=splits.about.get("val"))
    train_images = data.counts.images
    # +debug=fast / +debug=overfit read fewer batches an epoch.
    steps_per_epoch = debug.steps_per_epoch(pipeline.steps_per_epoch(train_images, cfg.trainer.batch_size), cfg.trainer)

    loss = build_loss(cfg, data.counts)
    if isinstance(loss, losses.WeightedCrossEntropy):
        mlrun.log_params({f"loss.class_weight.{name}": w for name, w in zip(cfg.data.class_names, loss.class_weights)})
    # The batch each optimizer update averages the gradients of (trainer.gradient_accumulation_steps).
    mlrun.log_params({"trainer.effective_batch_size": cfg.trainer.batch_size * accumulation_steps(cfg.trainer)})

    with strategy.scope():  # optimizer and metric variables are mirrored over the replicas, as the model's
        compile_model(cfg, model, loss, steps_per_epoch)
        # Ops without a deterministic GPU kernel: named now, not mid-run (it traces the step as fit will).
        determinism.preflight(model, cfg.data.image_size, cfg.deterministic)
    # XLA as Keras compiled it, not as asked: Keras falls back to no XLA where a layer lacks support.
    mlrun.set_tags({tags.PARAMETERS: model.count_params(), tags.REPLICAS: strategy.num_replicas_in_sync,
                    tags.XLA: str(bool(model.jit_compile)).lower()})
    return Setup(model, splits, loss, train_images, steps_per_epoch, val_ds, strategy,
                 distribute.resolve(cfg.trainer.strategy) == "multi_worker")


@dataclass
class Fitted:
    val_ds: tf.data.Dataset  # the validation batches fit read (+debug limits them): the chosen model is scored on them
    samples: tuple[np.ndarray, np.ndarray]  # the first validation images and masks
    callbacks: list[keras.callbacks.Callback]
    epochs: int  # epochs completed: trainer.epochs, or fewer when early stopping ended the training
    stopped_epoch: int | None = None  # 0-based epoch after which early stopping ended it (None: it did not)


def fit(cfg: DictConfig, mlrun, setup: Setup, checkpointer: callbacks.Checkpointer, first_epoch: int,
        profile_dir: Path) -> Fitted:
    """`model.fit` (multi_worker: seglab.engine.multi_worker.fit) from `first_epoch` to trainer.epochs (none left:
    nothing to fit) with the configured callbacks."""
    trainer, splits = cfg.trainer, setup.splits
    # Epoch e's batches depend only on (seed, e): a resumed run sees the batches an uninterrupted one would.
    train_ds = batches_of(cfg, splits.train, "train", training=True, epochs=range(first_epoch, trainer.epochs),
                          about=splits.about.get("train"))
    train_ds, val_ds = debug.limit(train_ds, setup.val_ds, trainer)
    fixed_train = (batches_of(cfg, splits.train.take(trainer.train_inference_images), "train", cache=False)
                   if trainer.train_inference_images else None)
    # From an uncached copy: reading a few examples of the cached split would leave its cache half-filled.
    samples = _first_examples(batches_of(cfg, splits.val, "val", cache=False), trainer.mask_samples)
    fit_callbacks = callbacks.for_training(cfg, mlrun, checkpointer, setup.train_images, setup.loss, fixed_train,
                                           samples, profile_dir, first_epoch)
    stopper = next((c for c in fit_callbacks if isinstance(c, callbacks.EarlyStopping)), None)
    # Killed after early stopping ended it, before the run finished: nothing is left to train.
    stopped = stopper is not None and 0 < first_epoch < trainer.epochs and stopper.exhausted(first_epoch - 1)
    if first_epoch < trainer.epochs and not stopped and setup.multi_worker:
        # Keras 3's fit does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585): seglab's own loop.
        multi_worker.fit(setup.model, setup.loss, setup.strategy, train_ds, val_ds, fit_callbacks, trainer.epochs, first_epoch,
                         setup.steps_per_epoch, list(cfg.data.class_names))
    elif first_epoch < trainer.epochs and not stopped:
        setup.model.fit(
            # verbose=0: EpochLine prints the short line; shuffle=False: the pipeline shuffles (Keras would warn).
            train_ds, validation_data=val_ds, epochs=trainer.epochs, initial_epoch=first_epoch, callbacks=fit_callbacks,
            steps_per_epoch=setup.steps_per_epoch, verbose=0, shuffle=False,
        )
    stopped_epoch = first_epoch - 1 if stopped else (stopper.stopped_epoch if stopper else None)
    epochs = trainer.epochs if stopped_epoch is None else stopped_epoch + 1
    return Fitted(val_ds, samples, fit_callbacks, max(first_epoch, epochs), stopped_epoch)


def log_training(cfg: DictConfig, mlrun, checkpointer: callbacks.Checkpointer, fitted: Fitted) -> None:
    """What the training left: its final checkpoints, the profile when one was taken, the best epoch and value,
    the epoch early stopping ended it after."""
    mlrun.log_checkpoint([checkpointer.best_path, checkpointer.last_path], fitted.epochs, "checkpoints")
    profiler = next((c for c in fitted.callbacks if isinstance(c, callbacks.Profiler)), None)
    if profiler and profiler.steps:
        _report_profile(mlrun, profiler)
    # As the console counts epochs, from 1 (docs/runs.md, "Counting epochs").
    stopped = {tags.STOPPED_EPOCH: fitted.stopped_epoch + 1} if fitted.stopped_epoch is not None else {}
    mlrun.set_tags({tags.BEST_STEP: checkpointer.best_epoch, tags.best(cfg.optimize_metric): checkpointer.best, **stopped})


def _report_profile(mlrun, profiler: callbacks.Profiler) -> None:
    mlrun.log_artifacts(str(profiler.directory), "profile")
    mlrun.log_metrics({"profile_seconds_per_step": profiler.seconds_per_step})
    log.info("profiled training steps %d-%d (%.3f s a step) in %s; see it: pip install tensorboard-plugin-profile, then "
             "tensorboard --logdir %s (Profile tab)", profiler.first, profiler.first + profiler.steps - 1,
             profiler.seconds_per_step, profiler.directory, profiler.directory)


def compile_model(cfg: DictConfig, model: keras.Model, loss: keras.losses.Loss, steps_per_epoch: int) -> None:
    """`model.compile` with the configured optimizer (`build_optimizer`), the segmentation metrics and the
    trainer's XLA and steps-per-execution settings.  Training and `seglab.bench` compile through here."""
    model.compile(
        optimizer=build_optimizer(cfg, steps_per_epoch),
        loss=loss,
        metrics=metrics.segmentation_metrics(cfg.data.num_classes, list(cfg.data.class_names)),
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
    )


def build_optimizer(cfg: DictConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The configured Keras optimizer with its learning-rate schedule (seglab/schedules.py: optimizer.learning_rate
    becomes a rate per optimizer update), optimizer.ema as Keras' `use_ema`/`ema_momentum` and
    trainer.gradient_accumulation_steps as its `gradient_accumulation_steps`."""
    accumulate = accumulation_steps(cfg.trainer)
    schedule = instantiate(cfg.scheduler, base_learning_rate=cfg.optimizer.learning_rate,
                           steps_per_epoch=steps_per_epoch / accumulate, epochs=cfg.trainer.epochs)
    args = OmegaConf.to_container(cfg.optimizer, resolve=True)
    use_ema, momentum = args.pop("ema"), args.pop("ema_momentum")
    return instantiate(args, learning_rate=schedule, use_ema=use_ema, ema_momentum=momentum,
                       gradient_accumulation_steps=accumulate if accumulate > 1 else None)


def accumulation_steps(trainer_cfg) -> int:
    """Batches whose gradients one optimizer update averages (trainer.gradient_accumulation_steps; null: 1)."""
    return trainer_cfg.gradient_accumulation_steps or 1


def build_loss(cfg: DictConfig, counts: statistics.ClassCounts) -> keras.losses.Loss:
    """The configured loss.  Class weights named by a balancing method (e.g. `median_frequency`)
    are computed from the label counts of the whole training split (resized, not augmented)."""
    args = {"num_classes": cfg.data.num_classes}
    method = cfg.loss.get("class_weights")
    if isinstance(method, str):
        args["class_weights"] = losses.balancing_weights(method, counts.pixels, counts.image_pixels).tolist()
        log.info("loss.class_weights=%s: %s", method, dict(zip(cfg.data.class_names, args["class_weights"])))
    return instantiate(cfg.loss, **args)


def _first_examples(batches: tf.data.Dataset, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` validation images and masks (the same every epoch and every run)."""
    images, masks = [], []
    for image, mask in batches.unbatch().take(max(count, 1)):
        images.append(image.numpy())
        masks.append(mask.numpy())
    return np.stack(images), np.stack(masks)


def _runtime_tags(device: str) -> dict[str, str]:
    return {tags.TENSORFLOW_VERSION: tf.__version__, tags.KERAS_VERSION: keras.__version__, tags.DEVICE: device}

"""The experiment as a story: data, model, loss, fit, evaluate, log.  Returns the metric a
Hydra sweeper optimises (`optimize_metric`, best epoch)."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seglab import console, losses, metrics, tracking
from seglab.data import batches_of, lineage, pipeline, statistics
from seglab.engine import callbacks, checkpoint, debug, determinism, distribute, lifecycle, per_image, runtime
from seglab.tracking import tags as keys

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    # First: a multi-worker strategy configures collective ops, which TensorFlow allows only before it starts.
    strategy = distribute.make(cfg.trainer.strategy)
    device = runtime.setup(cfg.seed, cfg.deterministic, cfg.trainer.precision)
    out = Path(HydraConfig.get().runtime.output_dir)
    # The run opens first, so that any failure below (data, model, training) ends it FAILED.
    # In a sweep, tracking.parent_run_id (set by seglab.sweep) makes this run a child of the sweep's run.
    # trainer.resume: continue a killed run of the same experiment (docs/resume.md).
    tags = {**lifecycle.tags(cfg), **lifecycle.owner_tags(), **_runtime_tags(device)}
    # Only the chief of a multi-worker cluster looks for a run to resume, logs and keeps checkpoints
    # (seglab/distribute.py; distribute.check refuses resume with multi_worker before TensorFlow loads).
    chief = distribute.is_chief()
    found = lifecycle.plan(cfg.trainer.resume, cfg.tracking.uri, cfg.tracking.experiment, tags[keys.RUN_KEY],
                           cfg.tracking.parent_run_id, 60 * cfg.trainer.heartbeat_timeout_min) if chief else lifecycle.Plan(None)
    mlrun = tracking.Run(cfg.tracking.uri, cfg.tracking.experiment, lifecycle.run_name(cfg), tags, cfg.tracking.parent_run_id,
                         resume_run_id=found.run_id) if chief else tracking.NoOpRun()
    with mlrun, distribute.checkpoint_directory(out / cfg.trainer.checkpoint_dir) as checkpoint_dir:
        mlrun.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
        mlrun.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")

        data = cfg.data
        # The model first: a pretrained encoder whose weights are missing fails before any data is made or downloaded.
        with strategy.scope():  # model, optimizer and metric variables are mirrored over the replicas
            model = instantiate(cfg.model, num_classes=data.num_classes, image_size=data.image_size)
        splits = instantiate(data.source)
        lineage.log(mlrun, data.name, splits, ["train", "val"])  # the run's input datasets: source, size, content digest
        val_ds = batches_of(cfg, splits.val, "val")
        train_images = pipeline.count(splits.train)
        # +debug=fast / +debug=overfit read fewer batches an epoch.
        steps_per_epoch = debug.steps_per_epoch(pipeline.steps_per_epoch(train_images, cfg.trainer.batch_size), cfg.trainer)

        loss = build_loss(cfg, splits.train)
        if isinstance(loss, losses.WeightedCrossEntropy):
            mlrun.log_params({f"loss.class_weight.{name}": w for name, w in zip(data.class_names, loss.class_weights)})

        with strategy.scope():  # optimizer and metric variables are mirrored over the replicas, as the model's
            compile_model(cfg, model, loss, steps_per_epoch)
            # Ops without a deterministic GPU kernel: named now, not mid-run (it traces the step as fit will).
            determinism.preflight(model, data.image_size, cfg.deterministic)
        mlrun.set_tags({"model.parameters": model.count_params(), "replicas": strategy.num_replicas_in_sync})

        checkpointer = callbacks.Checkpointer(checkpoint_dir, monitor=cfg.optimize_metric,
                                              upload=mlrun.log_checkpoint, upload_every=cfg.trainer.checkpoint_every)
        first_epoch = lifecycle.initial_epoch(found, cfg.tracking.uri, model, checkpointer, cfg.trainer.checkpoint_dir)
        # Epoch e's batches depend only on (seed, e): a resumed run sees the batches an uninterrupted one would.
        train_ds = batches_of(cfg, splits.train, "train", training=True, epochs=range(first_epoch, cfg.trainer.epochs))
        train_ds, val_ds = debug.limit(train_ds, val_ds, cfg.trainer)
        fit_callbacks = [
            # A NaN or infinite loss raises, so the run ends FAILED with the error instead of training on garbage.
            keras.callbacks.TerminateOnNaN(raise_error=True),
            callbacks.MetricsLogger(mlrun, train_images),
            checkpointer,
            callbacks.EpochLine(cfg.trainer.epochs, checkpointer),
            callbacks.Heartbeat(mlrun),
        ]
        if cfg.trainer.train_inference_images:
            # Before MetricsLogger: it adds train_inference_* to the epoch's logs, which MetricsLogger logs.
            fixed_train = batches_of(cfg, splits.train.take(cfg.trainer.train_inference_images), "train", cache=False)
            fit_callbacks.insert(1, callbacks.InferenceModeScores(fixed_train, data.num_classes, loss))
        # From an uncached copy: reading a few examples of the cached split would leave its cache half-filled.
        sample_images, sample_masks = _first_examples(batches_of(cfg, splits.val, "val", cache=False), cfg.trainer.mask_samples)
        if cfg.trainer.mask_samples:
            fit_callbacks.append(callbacks.MaskLogger(mlrun, sample_images, sample_masks))
        profiler = callbacks.Profiler(*cfg.trainer.profile_batches, out / "profile") if cfg.trainer.profile_batches else None
        if profiler:
            fit_callbacks.append(profiler)
        if first_epoch < cfg.trainer.epochs:
            model.fit(
                # verbose=0: EpochLine prints the short line; shuffle=False: the pipeline shuffles (Keras would warn).
                train_ds, validation_data=val_ds, epochs=cfg.trainer.epochs, initial_epoch=first_epoch, callbacks=fit_callbacks,
                steps_per_epoch=steps_per_epoch, verbose=0, shuffle=False,
            )

        mlrun.log_checkpoint([checkpointer.best_path, checkpointer.last_path], max(first_epoch, cfg.trainer.epochs), "checkpoints")
        if profiler and profiler.steps:
            _report_profile(mlrun, profiler)
        mlrun.set_tags({"best_step": checkpointer.best_epoch, f"best_{cfg.optimize_metric}": checkpointer.best})
        # The model users get (MLflow model, evaluate, predict) is the best epoch's unless asked otherwise:
        # a late epoch can be worse than an earlier one.
        if cfg.tracking.log_model == "last":
            chosen, chosen_epoch = checkpoint.inference_model(model), cfg.trainer.epochs - 1
        else:
            chosen, chosen_epoch = checkpoint.load_model(checkpointer.best_path), checkpointer.best_epoch
        # The chosen model's scores: the confusion matrix, a table per image and the worst images (seglab.per_image).
        final = per_image.score_images(chosen, val_ds, data.num_classes, worst=cfg.trainer.worst_samples)
        which = "best" if chosen_epoch == checkpointer.best_epoch else "last"
        mlrun.log_confusion_matrix(final.split_matrix, list(data.class_names), f"validation, {which} epoch ({chosen_epoch + 1})")
        per_image.log(mlrun, final, list(data.class_names), "val", getattr(splits.about.get("val"), "names", None))
        if cfg.tracking.log_model:
            with console.keras_silent():  # MLflow predicts on the examples to infer the signatures: no progress bars
                mlrun.log_model(chosen, input_example=sample_images[:1])
                served_uri = mlrun.log_served_model(chosen)  # takes encoded images: what `mlflow models serve` runs
            mlrun.set_tags({"seglab.model_epoch": chosen_epoch, "seglab.model_weights": cfg.tracking.log_model})
            if cfg.tracking.register_as and served_uri:
                final_scores = metrics.scores(final.split_matrix)
                mlrun.register_model(served_uri, cfg.tracking.register_as, {"run_id": mlrun.run_id, "data": data.name, "epoch": chosen_epoch, **{
                    f"val_{key}": final_scores[key] for key in ("mean_iou", "mean_dice", "pixel_accuracy")}})
        log.info(
            "best %s %.4f at epoch %d; checkpoints in %s; MLflow run %s: %s", cfg.optimize_metric, checkpointer.best,
            checkpointer.best_epoch + 1, checkpointer.directory, mlrun.run_id,
            console.ui_address(cfg.tracking.uri, mlrun.experiment_id, mlrun.run_id),
        )
    return checkpointer.best


def _report_profile(mlrun, profiler: callbacks.Profiler) -> None:
    mlrun.log_artifacts(str(profiler.directory), "profile")
    mlrun.log_metrics({"profile_seconds_per_step": profiler.seconds_per_step})
    log.info("profiled training steps %d-%d (%.3f s a step) in %s; see it: pip install tensorboard-plugin-profile, then "
             "tensorboard --logdir %s (Profile tab)", profiler.first, profiler.first + profiler.steps - 1,
             profiler.seconds_per_step, profiler.directory, profiler.directory)


def compile_model(cfg: DictConfig, model: keras.Model, loss: keras.losses.Loss, steps_per_epoch: int) -> None:
    """`model.compile` with the configured optimizer, its learning-rate schedule (seglab/schedules.py:
    optimizer.learning_rate becomes a rate per step), the segmentation metrics and the trainer's
    XLA and steps-per-execution settings.  Training and `seglab.bench` compile through here."""
    schedule = instantiate(cfg.scheduler, base_learning_rate=cfg.optimizer.learning_rate,
                           steps_per_epoch=steps_per_epoch, epochs=cfg.trainer.epochs)
    model.compile(
        optimizer=instantiate(cfg.optimizer, _partial_=True)(learning_rate=schedule),
        loss=loss,
        metrics=metrics.segmentation_metrics(cfg.data.num_classes, list(cfg.data.class_names)),
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
    )


def build_loss(cfg: DictConfig, train_split: tf.data.Dataset) -> keras.losses.Loss:
    """The configured loss.  Class weights named by a balancing method (e.g. `median_frequency`)
    are first computed from the label counts of the whole training split (resized, not augmented)."""
    args = {"num_classes": cfg.data.num_classes}
    method = cfg.loss.get("class_weights")
    if isinstance(method, str):
        counts = statistics.class_counts(batches_of(cfg, train_split, "train", cache=False), cfg.data.num_classes)
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
    return {"tensorflow.version": tf.__version__, "keras.version": keras.__version__, "device": device}

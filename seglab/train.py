"""The experiment as a story: data, model, loss, fit, evaluate, log.  Returns the metric a
Hydra sweeper optimises (`optimize_metric`, best epoch)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import seglab
from seglab import callbacks, checkpoint, losses, metrics, per_image, runtime, tracking
from seglab.data import cache_name, lineage, pipeline, statistics

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | None = None) -> float:
    device = runtime.setup(cfg.seed, cfg.deterministic)
    out = Path(output_dir or HydraConfig.get().runtime.output_dir)
    # The run opens first, so that any failure below (data, model, training) ends it FAILED.
    # In a sweep, tracking.parent_run_id (set by seglab.sweep) makes this run a child of the sweep's run.
    run_name = _job_suffixed(cfg.tracking.run_name or _run_name(cfg))
    with tracking.Run(cfg.tracking.uri, cfg.tracking.experiment, run_name, _tags(device), cfg.tracking.parent_run_id) as mlrun:
        mlrun.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
        mlrun.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")

        data = cfg.data
        # The model first: a pretrained encoder whose weights are missing fails before any data is made or downloaded.
        model = instantiate(cfg.model, num_classes=data.num_classes, image_size=data.image_size)
        splits = instantiate(data.source)
        lineage.log(mlrun, data.name, splits, ["train", "val"])  # the run's input datasets: source, size, content digest
        batches = dict(
            image_size=data.image_size, batch_size=cfg.trainer.batch_size, seed=cfg.seed,
            deterministic=cfg.deterministic, cache=data.cache, shuffle_buffer=data.shuffle_buffer,
        )
        train_ds = pipeline.make(splits.train, training=True, augment_options=dict(data.augment), cache_name=cache_name(data, "train"), **batches)
        val_ds = pipeline.make(splits.val, training=False, cache_name=cache_name(data, "val"), **batches)

        loss = _build_loss(cfg, splits.train, batches)
        if isinstance(loss, losses.WeightedCrossEntropy):
            mlrun.log_params({f"loss.class_weight.{name}": w for name, w in zip(data.class_names, loss.class_weights)})

        model.compile(
            optimizer=instantiate(cfg.optimizer),
            loss=loss,
            metrics=metrics.segmentation_metrics(data.num_classes, list(data.class_names)),
            jit_compile=cfg.trainer.jit_compile,
        )
        mlrun.set_tags({"model.parameters": model.count_params()})

        checkpointer = callbacks.Checkpointer(out / cfg.trainer.checkpoint_dir, monitor=cfg.optimize_metric)
        fit_callbacks = [
            # A NaN or infinite loss raises, so the run ends FAILED with the error instead of training on garbage.
            keras.callbacks.TerminateOnNaN(raise_error=True),
            callbacks.MetricsLogger(mlrun, int(splits.train.cardinality())),
            checkpointer,
        ]
        sample_images, sample_masks = _first_examples(val_ds, cfg.trainer.mask_samples)
        if cfg.trainer.mask_samples:
            fit_callbacks.append(callbacks.MaskLogger(mlrun, sample_images, sample_masks))
        model.fit(
            train_ds, validation_data=val_ds, epochs=cfg.trainer.epochs, callbacks=fit_callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )

        final = per_image.score_images(model, val_ds, data.num_classes, worst=cfg.trainer.worst_samples)
        mlrun.log_confusion_matrix(final.split_matrix, list(data.class_names), "validation, after the last epoch")
        per_image.log(mlrun, final, list(data.class_names), "val", getattr(splits.about.get("val"), "names", None))
        mlrun.log_artifact(str(checkpointer.best_path), "checkpoints")
        mlrun.log_artifact(str(checkpointer.last_path), "checkpoints")
        mlrun.set_tags({"best_step": checkpointer.best_epoch, f"best_{cfg.optimize_metric}": checkpointer.best})
        if cfg.tracking.log_model:
            mlrun.log_model(checkpoint.inference_model(model), input_example=sample_images[:1])
            served_uri = mlrun.log_served_model(model)  # takes encoded images: what `mlflow models serve` runs
            if cfg.tracking.register_as and served_uri:
                final_scores = metrics.scores(final.split_matrix)
                mlrun.register_model(served_uri, cfg.tracking.register_as, {"run_id": mlrun.run_id, "data": data.name, **{
                    f"val_{key}": final_scores[key] for key in ("mean_iou", "mean_dice", "pixel_accuracy")}})
        log.info(
            "best %s %.4f at epoch %d | MLflow run %s, experiment %r, tracking.uri=%s | checkpoints in %s",
            cfg.optimize_metric, checkpointer.best, checkpointer.best_epoch + 1, mlrun.run_id,
            cfg.tracking.experiment, cfg.tracking.uri, checkpointer.directory,
        )
    return checkpointer.best


def _build_loss(cfg: DictConfig, train_split: tf.data.Dataset, batches: dict) -> keras.losses.Loss:
    """The configured loss.  Class weights named by a balancing method (e.g. `median_frequency`)
    are first computed from the label counts of the whole training split (resized, not augmented)."""
    args = {"num_classes": cfg.data.num_classes}
    method = cfg.loss.get("class_weights")
    if isinstance(method, str):
        counts = statistics.class_counts(pipeline.make(train_split, training=False, **{**batches, "cache": None}), cfg.data.num_classes)
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


def _choice(cfg: DictConfig, group: str) -> str:
    """The chosen option of a group (`unet`, `ce`, `shapes`), as Hydra recorded it; without Hydra
    (train.run called directly), the data name or the module of the builder."""
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get(group) or group
    if group == "data":
        return cfg.data.name
    return cfg[group]._target_.rsplit(".", 2)[-2 if cfg[group]._target_.endswith(".build") else -1].lower()


def _run_name(cfg: DictConfig) -> str:
    return "-".join(_choice(cfg, g) for g in ("model", "loss", "data"))


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _job_suffixed(name: str) -> str:
    """The jobs of a sweep share `<model>-<loss>-<data>`; the job number tells them apart in the run list."""
    return f"{name}-job{HydraConfig.get().job.num}" if _in_sweep() else name


def _tags(device: str) -> dict[str, str]:
    tags = {
        "seglab.version": seglab.__version__,
        "tensorflow.version": tf.__version__,
        "keras.version": keras.__version__,
        "device": device,
    }
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        tags["hydra.overrides"] = " ".join(hydra_cfg.overrides.task) or "(defaults)"
        tags["hydra.output_dir"] = hydra_cfg.runtime.output_dir
    if _in_sweep():
        tags["seglab.sweep"] = "child"
        tags["hydra.job.num"] = str(HydraConfig.get().job.num)
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None

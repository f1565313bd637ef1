"""An evaluation (`python -m seglab.evaluate`, seglab/cli/evaluate.py says what it logs): a logged
model scored on a data config's test split (the validation split, with a warning, when the data set
has none) in a new MLflow run linked to the training run; it ends as a training run does
(seglab.engine.finish), and with an alias, the alias then names the evaluated version."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seglab import inference, tracking
from seglab.config import inference as inference_config
from seglab.config import schema
from seglab.config.data import size_of, size_text
from seglab.config.inference import InferenceOptions
from seglab.data import lineage, pipeline
from seglab.engine import claim, finish, owner
from seglab.metrics import scores
from seglab.tracking import registry, resumable, tags

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    split: str  # test, or val when the data set has no test split
    pixels: int  # the labelled pixels scored
    metrics: dict[str, float]  # `<split>_pixel_accuracy`, `<split>_mean_iou`, ..., as logged
    run_id: str | None
    experiment: str
    version: tuple[str, str] | None  # (registered name, version) the alias now names


def evaluate(model_uri: str, cfg: DictConfig, alias: str | None = None, options: InferenceOptions | None = None) -> Evaluation:
    """Score the model at `model_uri` on `cfg`'s data and log the evaluation run; with `alias`, point
    `models:/<name>@<alias>` at the evaluated version.  `options`: how the model is applied (resize by default)."""
    uri = cfg.tracking.uri
    options = options or InferenceOptions()
    # Before any work: set_alias needs a registered version.
    version = registry.registered_version(model_uri, uri) if alias else None
    training_run = tracking.model_run_id(model_uri, uri)
    if training_run:
        refuse_other_data(training_run, uri, cfg.data.name)
    adopt_resize(model_uri, cfg, training_run)
    model = load(model_uri, cfg, options)
    splits = instantiate(cfg.data.source)
    split_name = _split_name(splits, cfg.data.name)
    experiment, training_name = (
        tracking.run_experiment_and_name(training_run, uri) if training_run else (cfg.tracking.experiment, "model")
    )
    claim.end_dead(uri, experiment, 60 * cfg.trainer.heartbeat_timeout_min, "seglab.evaluate")  # e.g. an evaluation killed with -9
    run_tags = {**_tags(model_uri, cfg, split_name, training_run, version), **claim.owner_tags()}
    split, applied, stride = scoring(cfg, splits, split_name, model, options)  # a bad stride: refused before the run opens
    with owner.RunOwner(tracking.Run(uri, experiment, f"eval-{training_name}", run_tags)) as mlrun:
        mlrun.log_params({"model_uri": model_uri, "split": split_name, "inference.mode": options.mode,
                          "inference.flip": options.flip, **({"inference.stride": stride} if stride else {}),
                          **tracking.flatten({"data": OmegaConf.to_container(cfg.data, resolve=True)})})
        lineage.log(mlrun, cfg.data.name, splits, [split_name])
        chosen = finish.Chosen(model, f"{training_name} on {cfg.data.name} {split_name}", logits=applied)
        result = finish.finish(mlrun, chosen, split, cfg.trainer.worst_samples)
        found = split_metrics(result.split_matrix, split_name, split.class_names)
        mlrun.log_metrics(found)
    if version:
        registry.set_alias(*version, alias, uri)
    return Evaluation(split_name, int(result.split_matrix.sum()), found, mlrun.run_id, experiment, version)


def score_test(cfg: DictConfig, run, chosen: finish.Chosen, splits) -> None:
    """trainer.score_test: a training's model (`chosen`) scored on the test split as `evaluate` scores a logged
    one, into the training run itself: `test_*` metrics, `per_image_test.json` (seglab.report's intervals),
    `worst_test.png`, `confusion_matrix_test.*`.  The data set has a test split: seglab.engine.train.read_data
    refused it otherwise, before the run opened."""
    split, applied, _ = scoring(cfg, splits, "test", chosen.model, InferenceOptions())
    model = finish.Chosen(chosen.model, chosen.title.replace("validation", "test", 1), chosen.epoch, applied)
    result = finish.finish(run, model, split, cfg.trainer.worst_samples, matrix="confusion_matrix_test")
    run.log_metrics(split_metrics(result.split_matrix, "test", split.class_names))


def scoring(cfg: DictConfig, splits, split_name: str, model, options: InferenceOptions) -> tuple[finish.Split, Any, int | None]:
    """How a split is scored, by seglab.evaluate and by a training's trainer.score_test alike: its batches, the way
    `model` is applied to them and the sliding windows' stride (None: none).  At the model's size as trained; in
    windows of it in slide mode and for a model trained on crops (full images, scaled as in training, one a batch)."""
    windows = options.mode == "slide" or cfg.data.resize == "crop"
    stride = inference_config.slide_stride(options.stride, min(inference.model_size(model))) if windows else None
    full = cfg.data.resize == "crop"  # crop-trained: the whole covering image, in either mode (slide's windows too)
    batches = pipeline.make(
        getattr(splits, split_name), image_size=cfg.data.image_size, batch_size=1 if full else cfg.trainer.batch_size,
        training=False, seed=cfg.seed, deterministic=True, cache=None, resize="cover" if full else cfg.data.resize,
        ignore_index=cfg.data.ignore_index,
    )
    split = finish.Split(split_name, batches, list(cfg.data.class_names), finish.image_names(splits, split_name),
                         ordered=bool(cfg.deterministic))
    applied = partial(inference.batch_logits, model, mode="slide" if windows else "resize", stride=stride, flip=options.flip)
    return split, applied, stride


def load(model_uri: str, cfg: DictConfig, options: InferenceOptions):
    """The logged model as a Keras model; in resize mode with `cfg.data.image_size` set to the size it
    takes (the data source then builds its images at that size, not resized from another); in slide mode
    the split is scored at `data.image_size` as given, in windows of the model's size."""
    model = tracking.load_model(model_uri, cfg.tracking.uri)
    taken, given = inference.model_size(model), size_of(cfg.data.image_size)
    shown = size_text(cfg.data.image_size)
    if options.mode == "slide":
        log.info("slide mode: scoring at data.image_size=%s in %dx%d px windows", shown, *taken)
    elif taken != given:
        size = taken[0] if taken[0] == taken[1] else list(taken)
        log.info("the model takes %dx%d px images: data.image_size=%s becomes %s for this evaluation", *taken, shown,
                 size_text(size))
        OmegaConf.update(cfg, "data.image_size", size)
    if model.output_shape[-1] != cfg.data.num_classes:
        raise schema.ConfigError(
            f"the model predicts {model.output_shape[-1]} classes but data={cfg.data.name} has "
            f"data.num_classes={cfg.data.num_classes}: evaluate it on the data it was trained for."
        )
    return model


def adopt_resize(model_uri: str, cfg: DictConfig, training_run: str | None) -> None:
    """data.resize (and, for fit, the ignore_index its padding is labelled with) as the model was trained:
    scored as it learned to see images, whatever the composed data config says."""
    trained = tracking.model_resize(model_uri, cfg.tracking.uri)
    if trained != cfg.data.resize:
        log.info("the model was trained with data.resize=%s: this evaluation uses it too", trained)
    OmegaConf.update(cfg, "data.resize", trained)
    if trained == "fit" and cfg.data.ignore_index is None:
        before = resumable.get_run(cfg.tracking.uri, training_run).params.get("data.ignore_index") if training_run else None
        if before in (None, "null"):
            raise schema.ConfigError(f"the model of {model_uri} was trained with data.resize=fit, which labels the padding "
                                     "data.ignore_index, but it is null here: set data.ignore_index=255")
        OmegaConf.update(cfg, "data.ignore_index", int(before))


def refuse_other_data(training_run: str, uri: str, data_name: str) -> None:
    """A model is scored on the data it was trained for (issue 21: before, a pets model evaluated
    without `data=pets` was scored on shapes and logged as a pets evaluation): the training run's
    `data.name` param decides, before anything is logged.  A run without that param (a model logged
    by hand) is not checked."""

    trained_on = resumable.get_run(uri, training_run).params.get("data.name")
    if trained_on is not None and trained_on != data_name:
        raise schema.ConfigError(f"the model of run {training_run} was trained on data={trained_on} (its data.name param), "
                                 f"but this evaluation has data={data_name}: add data={trained_on}")


def _split_name(splits, data_name: str) -> str:
    if splits.test is not None:
        return "test"
    log.warning("data=%s has no test split; evaluating on the validation split instead. Model selection saw "
                "these images, so the scores are optimistic.", data_name)
    return "val"


def _tags(model_uri: str, cfg: DictConfig, split: str, training_run: str | None, version: tuple[str, str] | None) -> dict:
    found = {tags.MODEL_URI: model_uri, tags.SPLIT: split, tags.DATA: cfg.data.name}
    if training_run:
        found[tags.TRAINING_RUN] = training_run
    if version:
        found[tags.MODEL_VERSION] = f"{version[0]}/{version[1]}"
    return found


def split_metrics(cm: np.ndarray, split: str, class_names: list[str]) -> dict[str, float]:
    """The split's scores from its confusion matrix, as an evaluation logs them: pixel accuracy, mean
    IoU, mean Dice, then the IoU and Dice of each class that occurs (in truth or prediction)."""
    s = scores(cm)
    found = {f"{split}_{key}": s[key] for key in ("pixel_accuracy", "mean_iou", "mean_dice")}
    for kind in ("iou", "dice"):
        found.update({f"{split}_{kind}_{name}": float(v) for name, v in zip(class_names, s[kind]) if np.isfinite(v)})
    return found

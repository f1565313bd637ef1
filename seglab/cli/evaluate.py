"""`python -m seglab.evaluate model_uri=runs:/<run id>/model data=<name> [set_alias=<alias>] [key=value ...]`

Scores a logged model on the test split of a data config (the validation split, with a warning,
when the data set has none): pixel accuracy, per-class IoU, mean IoU and mean Dice, from one
confusion matrix over the whole split (seglab.metrics, as in training).  The scores are printed
and logged to a new MLflow run in the training run's experiment, named `eval-<training run>`,
tagged `seglab.training_run_id`, with the confusion matrix as a figure and as JSON, a table with one
row per image (`per_image_<split>.json`, seglab.per_image), the `trainer.worst_samples` worst images
by mean IoU (`worst_<split>.png`), and the split as the run's input dataset (seglab.data.lineage).
With `set_alias=<alias>` and a registered `model_uri` (`models:/<name>/<version>`), the alias then
names the evaluated version (`models:/<name>@<alias>`).

Every other argument is a training-config override (`data=...`, `data.source.test_size=...`,
`tracking.uri=...`, `trainer.batch_size=...`), composed from conf/ as `python -m seglab` does.
"""

from __future__ import annotations

import logging
import re
import sys

import numpy as np
from omegaconf import DictConfig, OmegaConf

from seglab import console, errors
from seglab.cli import helptext
from seglab.config import preflight, schema

log = logging.getLogger(__name__)
MODEL_URIS_IN_STORE = ("runs:/", "models:/")  # other model URIs (a local path) need no tracking store


OWN_KEYS = ("model_uri=", "set_alias=")  # this tool's arguments; the rest are config overrides
ALIAS = re.compile(r"^[A-Za-z_][\w-]*$")


def parse(argv: list[str]) -> tuple[str, str | None, DictConfig]:
    model_uris = [a.split("=", 1)[1] for a in argv if a.startswith("model_uri=")]
    if len(model_uris) != 1:
        raise schema.ConfigError(f"give model_uri=<uri> exactly once; usage: {__doc__.strip().splitlines()[0]}")
    aliases = [a.split("=", 1)[1] for a in argv if a.startswith("set_alias=")]
    alias = aliases[-1] if aliases else None
    if alias is not None and not ALIAS.match(alias):
        raise schema.ConfigError(f"set_alias={alias} is not an alias: use letters, digits, _ and -, starting with a letter (e.g. champion).")
    overrides = [a for a in argv if not a.startswith(OWN_KEYS)]
    # Only the data part matters here (the model is the logged one): its size comes from the model in `run`.
    cfg = schema.compose(overrides, check=False)
    schema.check_known_keys(cfg)
    OmegaConf.to_object(cfg.data)  # the data config's own range checks
    OmegaConf.to_object(cfg.trainer)
    if model_uris[0].startswith(MODEL_URIS_IN_STORE):
        preflight.check_store(cfg.tracking.uri, must_exist=True)
    return model_uris[0], alias, cfg


def score(model, split, cfg: DictConfig):
    """Per-image confusion matrices of `model` on `split` and its worst images (seglab.per_image)."""
    from seglab.data import pipeline
    from seglab.engine import per_image

    num_classes = cfg.data.num_classes
    if model.output_shape[-1] != num_classes:
        raise schema.ConfigError(
            f"the model predicts {model.output_shape[-1]} classes but data={cfg.data.name} has "
            f"data.num_classes={num_classes}: evaluate it on the data it was trained for."
        )
    batches = pipeline.make(
        split, image_size=model.input_shape[1], batch_size=cfg.trainer.batch_size, training=False,
        seed=cfg.seed, deterministic=True, cache=None,
    )
    return per_image.score_images(model, batches, num_classes, worst=cfg.trainer.worst_samples)


def run(model_uri: str, cfg: DictConfig, alias: str | None = None) -> dict[str, float]:
    """Evaluate, log the run, return the metrics (and with `alias`, point it at the evaluated version)."""
    from hydra.utils import instantiate

    from seglab import tracking
    from seglab.data import lineage
    from seglab.engine import per_image
    from seglab.metrics import scores
    from seglab.tracking import registry

    uri = cfg.tracking.uri
    # Before any work: set_alias needs a registered version.
    version = registry.registered_version(model_uri, uri) if alias else None
    model = tracking.load_model(model_uri, uri)
    if model.input_shape[1] != cfg.data.image_size:
        log.info("the model takes %d px images: data.image_size=%d becomes %d for this evaluation",
                 model.input_shape[1], cfg.data.image_size, model.input_shape[1])
        OmegaConf.update(cfg, "data.image_size", int(model.input_shape[1]))  # the source, too, builds at this size
    splits = instantiate(cfg.data.source)
    split_name, split = "test", splits.test
    if split is None:
        split_name, split = "val", splits.val
        log.warning("data=%s has no test split; evaluating on the validation split instead. Model selection saw "
                    "these images, so the scores are optimistic.", cfg.data.name)
    result = score(model, split, cfg)
    cm = result.split_matrix
    s = scores(cm)
    class_names = list(cfg.data.class_names)
    metrics = {f"{split_name}_pixel_accuracy": s["pixel_accuracy"], f"{split_name}_mean_iou": s["mean_iou"],
               f"{split_name}_mean_dice": s["mean_dice"]}
    metrics.update({f"{split_name}_iou_{name}": float(v) for name, v in zip(class_names, s["iou"]) if np.isfinite(v)})
    metrics.update({f"{split_name}_dice_{name}": float(v) for name, v in zip(class_names, s["dice"]) if np.isfinite(v)})

    training_run = tracking.model_run_id(model_uri, uri)
    experiment, training_name = (
        tracking.run_experiment_and_name(training_run, uri) if training_run else (cfg.tracking.experiment, "model")
    )
    tags = {"seglab.model_uri": model_uri, "seglab.split": split_name, "seglab.data": cfg.data.name}
    if training_run:
        tags["seglab.training_run_id"] = training_run
    if version:
        tags["seglab.model_version"] = f"{version[0]}/{version[1]}"
    about = splits.about.get(split_name)
    with tracking.Run(uri, experiment, f"eval-{training_name}", tags) as mlrun:
        mlrun.log_params({"model_uri": model_uri, "split": split_name,
                          **tracking.flatten({"data": OmegaConf.to_container(cfg.data, resolve=True)})})
        lineage.log(mlrun, cfg.data.name, splits, [split_name])
        mlrun.log_metrics(metrics)
        mlrun.log_confusion_matrix(cm, class_names, f"{training_name} on {cfg.data.name} {split_name}")
        per_image.log(mlrun, result, class_names, split_name, about.names if about else None)
    if version:
        registry.set_alias(*version, alias, uri)
        print(f"models:/{version[0]}@{alias} -> version {version[1]}")
    width = max(len(k) for k in metrics)
    print(f"{model_uri} on data={cfg.data.name}, {split_name} split ({cm.sum():,} pixels); MLflow run {mlrun.run_id} "
          f"in experiment {experiment!r}")
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.4f}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if helptext.print_usage(argv, __doc__):
        return 0
    model_uri, alias, cfg = parse(argv)
    console.quiet(console.is_verbose(cfg))  # before TensorFlow and MLflow load (`verbose=true` shows their notices)
    run(model_uri, cfg, alias)
    return 0


def cli() -> None:
    """`python -m seglab.evaluate` (seglab/evaluate.py)."""
    sys.exit(errors.main(main, prog="seglab.evaluate"))

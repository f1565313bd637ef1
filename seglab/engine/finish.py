"""The end of a run, the same for a training run and an evaluation run: the model it ends with,
scored per image on a split (seglab.engine.per_image), its confusion matrix, per-image table and
worst images logged; for training also the model, the served model and the registry entry.

Training (seglab.engine.train) scores the model `choose` picks on the validation split;
`seglab.evaluate` (seglab.engine.evaluate) scores a logged model on the test split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seglab import console, metrics
from seglab.engine import checkpoint, per_image
from seglab.tracking import tags


@dataclass
class Chosen:
    """The model a run ends with; `title` says which it is (the confusion matrix's title)."""

    model: object  # a keras.Model
    title: str
    epoch: int | None = None  # training: the 0-based epoch whose weights it holds
    logits: object = None  # how it is applied to a batch of images (seglab.inference.batch_logits); None: model(batch)


@dataclass
class Split:
    """What the model is scored on: `name` names the artifacts (`per_image_<name>.json`, `worst_<name>.png`)."""

    name: str
    batches: object  # a tf.data.Dataset of (image, mask) batches
    class_names: list[str]
    image_names: list[str] | None = None  # each image's file name, in the split's order (None: its index)
    ordered: bool = True  # read in a fixed order (deterministic=true): without names, the index names an image


@dataclass
class Publish:
    """A training run's model for its users (tracking.log_model, tracking.register_as)."""

    weights: str  # tracking.log_model: best | last
    input_example: np.ndarray  # one image: MLflow infers the model's signature from it
    register_as: str | None
    data: str  # the data config's name, a tag of the registered version
    resize: str = "stretch"  # data.resize: kept with the served model, so predict and serving bring images to it alike


def choose(log_model, model, checkpointer, epochs: int) -> Chosen:
    """The model users get (MLflow model, evaluate, predict): the best epoch's unless `log_model` is
    `last`, because a late epoch can be worse than an earlier one."""
    if log_model == "last":
        chosen, epoch = checkpoint.inference_model(model), epochs - 1
    else:
        chosen, epoch = checkpoint.load_model(checkpointer.best_path), checkpointer.best_epoch
    which = "best" if epoch == checkpointer.best_epoch else "last"
    return Chosen(chosen, f"validation, {which} epoch ({epoch + 1})", epoch)


def image_names(splits, split: str) -> list[str] | None:
    """The file names of a data source's split, when the source knows them."""
    return getattr(splits.about.get(split), "names", None)


def finish(run, chosen: Chosen, split: Split, worst: int, publish: Publish | None = None,
           matrix: str = "confusion_matrix") -> per_image.PerImage:
    """Score `chosen` on `split` per image and log to `run` (a tracking.Run) the confusion matrix (`matrix`: its
    file name's stem), the per-image table and the `worst` worst images; with `publish`, the model, the served
    model and (tracking.register_as) the registry entry.  The per-image scores."""
    result = per_image.score_images(chosen.model, split.batches, len(split.class_names), worst=worst, logits=chosen.logits)
    run.log_confusion_matrix(result.split_matrix, split.class_names, chosen.title, matrix)
    per_image.log(run, result, split.class_names, split.name, split.image_names, split.ordered)
    if publish is not None:
        _publish(run, chosen, publish, split.name, result.split_matrix)
    return result


def _publish(run, chosen: Chosen, publish: Publish, split: str, matrix: np.ndarray) -> None:
    with console.keras_silent():  # MLflow predicts on the examples to infer the signatures: no progress bars
        # At the chosen epoch's step: the logged models show the scores of the weights they hold, not epoch 1's.
        run.log_model(chosen.model, input_example=publish.input_example, step=chosen.epoch)
        # Takes encoded images: what `mlflow models serve` runs.
        served_uri = run.log_served_model(chosen.model, step=chosen.epoch, resize=publish.resize)
    run.set_tags({tags.MODEL_STEP: chosen.epoch, tags.MODEL_WEIGHTS: publish.weights})
    if publish.register_as and served_uri:
        found = metrics.scores(matrix)
        run.register_model(served_uri, publish.register_as, {"run_id": run.run_id, "data": publish.data, "epoch": chosen.epoch + 1, **{
            f"{split}_{key}": found[key] for key in ("mean_iou", "mean_dice", "pixel_accuracy")}})

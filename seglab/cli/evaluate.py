"""`python -m seglab.evaluate model_uri=runs:/<run id>/model data=<name> [set_alias=<alias>] [inference.mode=slide] [key=value ...]`

Scores a logged model on the test split of a data config (the validation split, with a warning,
when the data set has none): pixel accuracy, per-class IoU, mean IoU and mean Dice, from one
confusion matrix over the whole split (seglab.metrics, as in training).  The scores are printed
and logged to a new MLflow run in the training run's experiment, named `eval-<training run>`,
tagged `seglab.training_run_id`, with the confusion matrix as a figure and as JSON, a table with one
row per image (`per_image_<split>.json`, seglab.engine.per_image), the `trainer.worst_samples` worst images
by mean IoU (`worst_<split>.png`), and the split as the run's input dataset (seglab.data.lineage).
With `set_alias=<alias>` and a registered `model_uri` (`models:/<name>/<version>`), the alias then
names the evaluated version (`models:/<name>@<alias>`).

`inference.mode=resize` (default) scores the split at the model's input size; `inference.mode=slide`
scores it at `data.image_size` (say a larger one), each image's logits averaged over windows of the
model's size every `inference.stride` pixels (half a window by default), as `seglab.predict` does;
`inference.flip=true` adds horizontal-flip test-time augmentation.  The options are logged as params.

Every other argument is a training-config override (`data=...`, `data.source.test_size=...`,
`tracking.uri=...`, `trainer.batch_size=...`), composed from conf/ as `python -m seglab` does.
"""

# Lazy imports: the engine (TensorFlow, MLflow) loads once the config is validated: a mistake answers in a second.

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from seglab import console, errors, tracking
from seglab.cli import helptext
from seglab.config import inference as inference_config
from seglab.config import preflight, schema
from seglab.config import tracking as tracking_config
from seglab.config.inference import InferenceOptions

MODEL_URIS_IN_STORE = ("runs:/", "models:/")  # other model URIs (a local path) need no tracking store


OWN_KEYS = ("model_uri=", "set_alias=", "inference.")  # this tool's arguments; the rest are config overrides


@dataclass
class Request:
    model_uri: str
    alias: str | None
    cfg: DictConfig  # the composed training config (its data part is what matters)
    inference: InferenceOptions
ALIAS = re.compile(r"^[A-Za-z_][\w-]*$")


def parse(argv: list[str]) -> Request:
    model_uris = [a.split("=", 1)[1] for a in argv if a.startswith("model_uri=")]
    if len(model_uris) != 1:
        raise schema.ConfigError(f"give model_uri=<uri> exactly once; usage: {__doc__.strip().splitlines()[0]}")
    aliases = [a.split("=", 1)[1] for a in argv if a.startswith("set_alias=")]
    alias = aliases[-1] if aliases else None
    if alias is not None and not ALIAS.match(alias):
        raise schema.ConfigError(f"set_alias={alias} is not an alias: use letters, digits, _ and -, starting with a letter (e.g. champion).")
    problem = alias and tracking_config.alias_problem(alias)
    if problem:  # MLflow would refuse it only once the evaluation has run and been logged
        raise schema.ConfigError(f"set_alias={alias} is not allowed: {problem}; choose another, e.g. set_alias=champion.")
    options = inference_config.parse([a for a in argv if a.startswith("inference.")])
    overrides = [a for a in argv if not a.startswith(OWN_KEYS)]
    # Only the data part matters here (the model is the logged one): its size comes from the model (engine.evaluate.load).
    cfg = schema.compose(overrides, check=False)
    schema.check_known_keys(cfg)
    OmegaConf.to_object(cfg.data)  # the data config's own range checks
    OmegaConf.to_object(cfg.trainer)
    if model_uris[0].startswith(MODEL_URIS_IN_STORE):
        preflight.check_store(cfg.tracking.uri, must_exist=True, writes=True)  # the evaluation is recorded as a run
    return Request(model_uris[0], alias, cfg, options)


def run(request: Request) -> dict[str, float]:
    """Evaluate (seglab.engine.evaluate), print the scores, return them."""
    model_uri, alias, cfg = request.model_uri, request.alias, request.cfg
    tracking.check_model_uri(model_uri, cfg.tracking.uri)  # a wrong run id answers before TensorFlow loads
    from seglab.engine import evaluate

    found = evaluate.evaluate(model_uri, cfg, alias, request.inference)
    if found.version:
        print(f"models:/{found.version[0]}@{alias} -> version {found.version[1]}")
    width = max(len(k) for k in found.metrics)
    print(f"{model_uri} on data={cfg.data.name}, {found.split} split ({found.pixels:,} pixels); MLflow run {found.run_id} "
          f"in experiment {found.experiment!r}")
    for key, value in found.metrics.items():
        print(f"  {key:<{width}}  {value:.4f}")
    return found.metrics


def main(argv: list[str] | None = None) -> int:
    if (argv := helptext.arguments(argv, __doc__)) is None:
        return 0
    request = parse(argv)
    console.quiet(console.is_verbose(request.cfg))  # before TensorFlow and MLflow load (`verbose=true` shows their notices)
    run(request)
    return 0


def cli() -> None:
    """`python -m seglab.evaluate` (seglab/evaluate.py runs it)."""
    sys.exit(errors.main(main, prog="seglab.evaluate"))

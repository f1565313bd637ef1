"""`python -m seglab.export model_uri=runs:/<run id>/model format=onnx|litert|saved_model output=DIR`

Exports a model logged by seglab (from any MLflow store, `tracking.uri`, default the training
default `sqlite:///mlflow.db`) with Keras 3's exporters: `DIR/model.onnx` (format=onnx),
`DIR/model.tflite` (format=litert) or the SavedModel directory `DIR/saved_model`.  The file takes
(N, H, W, 3) float32 RGB in [0, 1] at the model's input size (H, W), data.image_size, and answers
(N, H, W, classes) float32 logits.  It is then run by its own runtime (onnxruntime, TensorFlow's LiteRT interpreter,
TensorFlow) on a sample input and compared with the Keras model's logits: the largest absolute
difference is printed.  When the model belongs to a run, the export is logged to that run as an
artifact under `export/<format>/`.  How to run each file: docs/export.md.

Other keys: `batch_size=N` (the batch the file takes; default any: SegFormer's ONNX needs 1),
`tracking.uri=...`, `verbose=true` (library notices too).
"""

# Lazy imports: TensorFlow and MLflow load once the arguments are checked: a mistake answers in a second.

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from seglab import console, errors, tracking
from seglab.cli import helptext
from seglab.config import preflight
from seglab.config import tracking as tracking_config
from seglab.config.schema import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("onnx", "litert", "saved_model")  # seglab.engine.export.FORMATS says what each writes
# format -> the packages its converter and its check import, beyond TensorFlow (pip install 'seglab[export]')
NEEDS = {"onnx": ("tf2onnx", "onnxruntime"), "litert": (), "saved_model": ()}


@dataclass
class ExportConfig:
    model_uri: str = MISSING
    format: str = MISSING
    output: str = MISSING
    batch_size: Optional[int] = None  # the batch the exported file takes; None: any
    verbose: bool = False  # true: TensorFlow's and MLflow's notices too
    tracking: tracking_config.TrackingRef = field(default_factory=tracking_config.TrackingRef)


def parse(argv: list[str]) -> ExportConfig:
    """key=value arguments -> a checked ExportConfig; ConfigError names a wrong or missing key."""
    usage = __doc__.strip().splitlines()[0]
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExportConfig), OmegaConf.from_dotlist(list(argv)))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"missing {', '.join(missing)}; usage: {usage}")
        config: ExportConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(f"{errors.explain(err)}; usage: {usage}") from err
    if config.format not in FORMATS:
        raise ConfigError(f"format={config.format} is not allowed: choose one of {', '.join(FORMATS)}.")
    if config.batch_size is not None and config.batch_size < 1:
        raise ConfigError(f"batch_size={config.batch_size} is not allowed: use an integer >= 1, or null for any batch.")
    absent = [name for name in NEEDS[config.format] if importlib.util.find_spec(name) is None]
    if absent:
        raise ConfigError(f"format={config.format} needs {' and '.join(absent)}: install them with pip install 'seglab[export]'.")
    preflight.writable_dir(Path(config.output), "output", config.output)
    if config.model_uri.startswith(("runs:/", "models:/")):
        preflight.check_store(config.tracking.uri, must_exist=True)
    return config


def run(cfg: ExportConfig):
    """Export and check; (Exported, the run the export was logged to or None)."""
    from seglab.engine import export  # TensorFlow: only once the arguments are checked

    model = tracking.load_model(cfg.model_uri, cfg.tracking.uri)
    exported = export.export(model, cfg.format, Path(cfg.output), cfg.batch_size)
    run_id = tracking.log_export(cfg.model_uri, cfg.tracking.uri, exported.path, f"export/{cfg.format}")
    return exported, run_id


def main(argv: list[str] | None = None) -> int:
    if (argv := helptext.arguments(argv, __doc__)) is None:
        return 0
    cfg = parse(argv)
    console.quiet(cfg.verbose)  # before TensorFlow and MLflow load
    exported, run_id = run(cfg)
    logged = f"; logged to run {run_id} as export/{cfg.format}/{exported.path.name}" if run_id else ""
    print(f"wrote {exported.path} (format={cfg.format}); max abs difference from the Keras model's logits on a sample "
          f"input: {exported.max_abs_difference:.3g}{logged}")
    return 0


def cli() -> None:
    """`python -m seglab.export` (seglab/export.py runs it)."""
    sys.exit(errors.main(main, prog="seglab.export"))

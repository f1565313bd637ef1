"""`python -m seglab.predict model_uri=runs:/<run id>/model input=DIR_OR_FILE output=DIR`

Segments every image under `input` (a file, or a directory searched recursively) with a model
logged by seglab, from any MLflow store (`tracking.uri`, default the training default
`sqlite:///mlflow.db`).  Per image it writes `<file name>_mask.png` (e.g. `cat.jpg_mask.png`) (the label of each pixel as its grey
value, at the image's own size) and `<file name>_overlay.png` (the labels' colours over the image).
Images of any size are resized to the model's input (bilinear, as in training) and the predicted
mask back to the image's size with nearest-neighbour.  Files that cannot be read as images are
skipped and named at the end.

Other keys: `batch_size=8`, `tracking.uri=...`, `verbose=true` (library notices too).
"""

# Lazy imports: TensorFlow and MLflow load once the arguments are checked: a mistake answers in a second.

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from tqdm import tqdm

from seglab import console, errors
from seglab.cli import helptext
from seglab.config import preflight
from seglab.config.schema import ConfigError
from seglab.util import visualize

log = logging.getLogger(__name__)


@dataclass
class TrackingRef:
    uri: str = "sqlite:///mlflow.db"


@dataclass
class PredictConfig:
    model_uri: str = MISSING
    input: str = MISSING
    output: str = MISSING
    batch_size: int = 8
    verbose: bool = False  # true: TensorFlow's and MLflow's notices too
    tracking: TrackingRef = field(default_factory=TrackingRef)


def parse(argv: list[str]) -> PredictConfig:
    """key=value arguments -> a checked PredictConfig; ConfigError names a wrong or missing key."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(PredictConfig), OmegaConf.from_dotlist(list(argv)))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"missing {', '.join(missing)}; usage: {__doc__.strip().splitlines()[0]}")
        config: PredictConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(f"{errors.explain(err)}; usage: {__doc__.strip().splitlines()[0]}") from err
    if config.batch_size < 1:
        raise ConfigError(f"batch_size={config.batch_size} is not allowed: use an integer >= 1.")
    if not Path(config.input).exists():
        raise ConfigError(f"input={config.input} does not exist: give an image file or a directory of images.")
    preflight.check_output_outside_input(config.input, config.output)
    if config.model_uri.startswith(("runs:/", "models:/")):
        preflight.check_store(config.tracking.uri, must_exist=True)
    return config


def input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3); grey, palette and RGBA images are converted.  Raises OSError or ValueError
    for anything that is not a readable image."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def write(output: Path, relative: Path, image: np.ndarray, labels: np.ndarray) -> None:

    target = output / relative.parent
    target.mkdir(parents=True, exist_ok=True)
    # The full file name, not the stem: a.jpg and a.png in one folder must not overwrite each other.
    Image.fromarray(labels).save(target / f"{relative.name}_mask.png")
    Image.fromarray(visualize.overlay(image, labels)).save(target / f"{relative.name}_overlay.png")


def run(cfg: PredictConfig) -> tuple[int, list[tuple[Path, str]]]:
    """Segment every input; (images written, [(unreadable file, why)])."""

    from seglab import inference, tracking  # TensorFlow and MLflow: only once the arguments are checked

    source, output = Path(cfg.input), Path(cfg.output)
    files = input_files(source)
    if not files:
        raise ConfigError(f"input={cfg.input} holds no files.")
    model = tracking.load_model(cfg.model_uri, cfg.tracking.uri)
    root = source.parent if source.is_file() else source
    written, skipped = 0, []
    with tqdm(total=len(files), unit="image", desc="predict", file=sys.stderr, disable=None) as bar:  # None: no bar off a terminal
        for start in range(0, len(files), cfg.batch_size):
            readable = []
            for path in files[start : start + cfg.batch_size]:
                try:
                    readable.append((path, read_rgb(path)))
                except (OSError, ValueError, Image.DecompressionBombError) as err:
                    skipped.append((path, str(err).splitlines()[0] if str(err) else type(err).__name__))
            if readable:
                for (path, image), labels in zip(readable, inference.segment(model, [im for _, im in readable])):
                    write(output, path.relative_to(root), image, labels)
                written += len(readable)
            bar.update(min(cfg.batch_size, len(files) - start))
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if helptext.print_usage(argv, __doc__):
        return 0
    cfg = parse(argv)
    console.quiet(cfg.verbose)  # before TensorFlow and MLflow load
    written, skipped = run(cfg)
    for path, why in skipped:
        log.warning("skipped %s: not a readable image (%s)", path, why)
    print(f"wrote {written} masks and overlays to {cfg.output}" + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else ""))
    return 0 if written else 1


def cli() -> None:
    """`python -m seglab.predict` (seglab/predict.py runs it)."""
    sys.exit(errors.main(main, prog="seglab.predict"))

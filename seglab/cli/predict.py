"""`python -m seglab.predict model_uri=runs:/<run id>/model input=DIR_OR_FILE output=DIR`

Segments every image under `input` (a file, or a directory searched recursively) with a model
logged by seglab, from any MLflow store (`tracking.uri`, default the training default
`sqlite:///mlflow.db`).  Per image it writes `<file name>_mask.png` (e.g. `cat.jpg_mask.png`) (the label of each pixel as its grey
value, at the image's own size) and `<file name>_overlay.png` (the labels' colours over the image).
Images of any size are brought to the model's input (H, W) as its training's `data.resize` did (stretched
bilinear; fitted inside and padded; or, for crop, scaled to cover (H, W) and read in windows of it) and the
predicted mask back to the image's size with nearest-neighbour; with `inference.mode=slide`, windows of the
model's input size slide over the image at full resolution every `inference.stride` pixels (default
half the window's shorter side) and the logits of overlapping windows are averaged (for images larger than the
training size).  16-bit images are scaled to 8 bits (not clipped); grey, palette and CMYK images are
converted to RGB and an alpha channel is dropped (seglab/util/images.py).  Files that cannot be read
as images are skipped, each named in one line.

Other keys: `batch_size=8`, `inference.mode=resize|slide`, `inference.stride=N`, `inference.flip=true`, `tracking.uri=...`,
`verbose=true` (library notices too).
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

from seglab import console, errors, tracking
from seglab.cli import helptext
from seglab.config import inference as inference_config
from seglab.config import preflight
from seglab.config import tracking as tracking_config
from seglab.config.inference import InferenceOptions
from seglab.config.schema import ConfigError
from seglab.util import atomic, images, visualize

log = logging.getLogger(__name__)

@dataclass
class PredictConfig:
    model_uri: str = MISSING
    input: str = MISSING
    output: str = MISSING
    batch_size: int = 8
    verbose: bool = False  # true: TensorFlow's and MLflow's notices too
    tracking: tracking_config.TrackingRef = field(default_factory=tracking_config.TrackingRef)
    inference: InferenceOptions = field(default_factory=InferenceOptions)


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
    inference_config.check(config.inference)
    if not Path(config.input).exists():
        raise ConfigError(f"input={config.input} does not exist: give an image file or a directory of images.")
    preflight.check_output_outside_input(config.input, config.output)
    if config.model_uri.startswith(("runs:/", "models:/")):
        preflight.check_store(config.tracking.uri, must_exist=True)
    preflight.writable_dir(Path(config.output), "output", config.output)  # an existing file, or no permission
    return config


def slide_stride(options: InferenceOptions, window: int) -> int | None:
    """The stride `slide` mode moves the model's `window` by (None in resize mode)."""
    return inference_config.slide_stride(options.stride, window) if options.mode == "slide" else None


def input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def write(output: Path, relative: Path, image: np.ndarray, labels: np.ndarray) -> None:

    target = output / relative.parent
    target.mkdir(parents=True, exist_ok=True)
    # The full file name, not the stem: a.jpg and a.png in one folder must not overwrite each other.
    # Each under a temporary name, renamed when complete: a full disk or a kill leaves no half PNG.
    atomic.write(target / f"{relative.name}_mask.png", Image.fromarray(labels).save)
    atomic.write(target / f"{relative.name}_overlay.png", Image.fromarray(visualize.overlay(image, labels)).save)


def run(cfg: PredictConfig) -> tuple[int, list[tuple[Path, str]]]:
    """Segment every input; (images written, [(unreadable file, why)])."""

    source, output = Path(cfg.input), Path(cfg.output)
    files = input_files(source)
    if not files:
        raise ConfigError(f"input={cfg.input} holds no files.")
    # Headers only, before the model loads: a folder (or file) with nothing to segment answers in seconds.
    skipped = [(path, why) for path in files if (why := images.not_an_image(path))]
    if len(skipped) == len(files):
        raise ConfigError(f"input={cfg.input} holds no readable image ({len(files)} file(s); {skipped[0][0]}: {skipped[0][1]}); "
                          "give an image file or a folder of images.")
    files = [path for path in files if path not in dict(skipped)]
    tracking.check_model_uri(cfg.model_uri, cfg.tracking.uri)  # a wrong run id answers before TensorFlow loads
    from seglab import inference  # TensorFlow

    model = tracking.load_model(cfg.model_uri, cfg.tracking.uri)
    resize = tracking.model_resize(cfg.model_uri, cfg.tracking.uri)  # as the model was trained: stretch, fit or crop
    stride = slide_stride(cfg.inference, min(inference.model_size(model)))
    root = source.parent if source.is_file() else source
    written = 0
    with tqdm(total=len(files), unit="image", desc="predict", file=sys.stderr, disable=None) as bar:  # None: no bar off a terminal
        for start in range(0, len(files), cfg.batch_size):
            readable = []
            for path in files[start : start + cfg.batch_size]:
                try:
                    readable.append((path, images.read_rgb(path)))
                except images.UNREADABLE as err:
                    skipped.append((path, images.why_unreadable(err)))
            if readable:
                masks = inference.segment(model, [im for _, im in readable], mode=cfg.inference.mode, stride=stride,
                                         flip=cfg.inference.flip, resize=resize)
                for (path, image), labels in zip(readable, masks):
                    write(output, path.relative_to(root), image, labels)
                written += len(readable)
            bar.update(min(cfg.batch_size, len(files) - start))
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    if (argv := helptext.arguments(argv, __doc__)) is None:
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

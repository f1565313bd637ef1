"""How a trained model is applied to images (`inference.*`), the one definition that `seglab.predict`,
`seglab.evaluate` and the served model's params check against; TensorFlow-free, so a wrong value answers
before it loads.  What each mode does: seglab/inference.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from seglab import errors
from seglab.config.check import ConfigError

MODES = ("resize", "slide")


@dataclass
class InferenceOptions:
    mode: str = "resize"  # one of MODES
    stride: Optional[int] = None  # slide: pixels between windows; None: half the model's input size
    flip: bool = False  # test-time augmentation: average with the horizontally flipped image's logits


def parse(dotlist: list[str]) -> InferenceOptions:
    """`inference.mode=slide`, `inference.stride=16`, `inference.flip=true` -> checked InferenceOptions."""
    try:
        cfg = OmegaConf.merge(OmegaConf.create({"inference": OmegaConf.structured(InferenceOptions)}),
                              OmegaConf.from_dotlist(dotlist))
        options: InferenceOptions = OmegaConf.to_object(cfg.inference)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(errors.explain(err) or str(err)) from err
    check(options)
    return options


def check(options: InferenceOptions, prefix: str = "inference.") -> None:
    """ConfigError naming a mode outside MODES, a stride below 1, or a stride without mode slide (it would be ignored)."""
    if options.mode not in MODES:
        raise ConfigError(f"{prefix}mode={options.mode} is not allowed: choose one of {', '.join(MODES)}.")
    if options.stride is not None and options.stride < 1:
        raise ConfigError(f"{prefix}stride={options.stride} is not allowed: use an integer >= 1 (pixels between windows).")
    if options.stride is not None and options.mode != "slide":
        raise ConfigError(f"{prefix}stride={options.stride} only takes effect with {prefix}mode=slide "
                          f"({prefix}mode={options.mode} resizes each image whole): add {prefix}mode=slide, "
                          f"or leave {prefix}stride out.")


def slide_stride(stride: int | None, window: int, prefix: str = "inference.") -> int:
    """The stride `slide` mode moves a model's `window` by: `stride` pixels, or half a window (None); ConfigError
    beyond a window, which would leave pixels between the windows unseen."""
    chosen = stride or max(window // 2, 1)
    if chosen > window:
        raise ConfigError(f"{prefix}stride={chosen} is not allowed for this model: use at most its input size, {window} "
                          "(a larger stride leaves pixels between the windows).")
    return chosen

"""`python -m seglab.models NAME [key=value ...]`: the model summary, parameter count and forward
GFLOPs per image of `model=NAME` at the configured size (data.image_size, data.num_classes).

    python -m seglab.models unet_mobilenet data.image_size=224 model.encoder.weights=null
"""

# Lazy imports: TensorFlow loads once the config is validated.

from __future__ import annotations

import sys
from pathlib import Path

from hydra.utils import instantiate

from seglab import console, errors
from seglab.cli import helptext
from seglab.config import schema
from seglab.config.data import size_of
from seglab.config.schema import CONF_DIR


def describe(name: str, overrides: list[str]) -> tuple[int, int]:
    """Print the summary; return (parameters, forward FLOPs per image)."""
    cfg = schema.compose([f"model={name}", *overrides])
    console.quiet(console.is_verbose(cfg))
    from seglab.models.flops import forward_flops  # imports TensorFlow: after validation, as in `python -m seglab`

    model = instantiate(cfg.model, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size)
    model.summary(expand_nested=False)
    params, flops = model.count_params(), forward_flops(model)
    height, width = size_of(cfg.data.image_size)
    print(f"{name}: {params:,} parameters, {flops / 1e9:.2f} GFLOPs per {height}x{width} image ({cfg.data.num_classes} classes)")
    return params, flops


def main(argv: list[str]) -> None:
    if helptext.print_usage(argv, __doc__):
        return
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        raise schema.ConfigError(f"usage: python -m seglab.models NAME [key=value ...] (NAME: one of {', '.join(options())})")
    describe(argv[0], argv[1:])


def options() -> list[str]:
    return sorted(p.stem for p in Path(CONF_DIR, "model").glob("*.yaml"))


def cli() -> None:
    errors.main(main, sys.argv[1:], prog="seglab.models")

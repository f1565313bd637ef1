"""`python -m seglab.data NAME [key=value ...]`: benchmark a data set's training pipeline.
(`python -m seglab.data inspect PATH`: what a data set holds and how to train on it, seglab/data/inspect.py.)

Composes the real config (`data=NAME` plus the overrides, validated like `python -m seglab`),
builds the training pipeline exactly as `seglab.train` does, and prints images/second for the
first pass (reads, decodes and fills the cache) and for the following passes (what the model
sees every later epoch).  Writes a grid of augmented training samples (image | mask) as a PNG.
"""

# Lazy imports: TensorFlow loads once the config is validated.

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from seglab import console, errors
from seglab.config import preflight, schema
from seglab.config.check import require
from seglab.data import batches_of, inspect
from seglab.util import visualize


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    return schema.compose([f"data={name}", *overrides])


def images_per_second(batches, passes: int) -> tuple[list[float], list[float]]:
    """Iterate the whole data set `passes` times; images/second of each pass, and the CPU milliseconds this
    process spent per image (all its threads): the cost, which other programs' load on the machine barely moves."""
    rates, cpu_ms = [], []
    for _ in range(passes):
        start, cpu, images = time.perf_counter(), time.process_time(), 0
        for image, _ in batches:
            images += int(image.shape[0])
        rates.append(images / (time.perf_counter() - start))
        cpu_ms.append(1000 * (time.process_time() - cpu) / max(images, 1))
    return rates, cpu_ms


def sample_grid(batches, count: int, num_classes: int):
    """(rows of image | coloured mask) as uint8 RGB, from the first `count` training examples."""


    images, masks = zip(*batches.unbatch().take(count).as_numpy_iterator())
    return visualize.mask_grid(np.stack(images), np.stack(masks), num_classes=num_classes)


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inspect"]:
        return inspect.main(argv[1:])
    parser = errors.argument_parser(prog="python -m seglab.data", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a data config: shapes, pets, coco_cat, ... (conf/data/NAME.yaml)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.image_size=128 trainer.batch_size=32")
    parser.add_argument("--passes", type=int, default=3, help="passes over the training split (the first fills the cache)")
    parser.add_argument("--samples", type=int, default=8, help="training examples in the PNG grid")
    parser.add_argument("--out", default=None, help="PNG path (default: data-NAME.png)")
    args = parser.parse_args(argv)
    require(args.passes >= 2, "--passes", args.passes, "use 2 or more (the first pass fills the cache, the later ones are what training sees)")
    require(args.samples >= 1, "--samples", args.samples, "use 1 or more")
    out = args.out or f"data-{args.name}.png"
    require(Path(out).suffix.lower() in Image.registered_extensions(), "--out", out, "give an image file name, e.g. --out samples.png")
    preflight.writable_file(out, "--out")  # now, not after the passes
    cfg = compose_config(args.name, args.overrides)
    console.quiet(console.is_verbose(cfg))


    from seglab.engine import runtime

    runtime.setup(cfg.seed, cfg.deterministic)
    data = cfg.data
    splits = instantiate(data.source)
    batches = batches_of(cfg, splits.train, "train", training=True, about=splits.about.get("train"))
    rates, cpu_ms = images_per_second(batches, args.passes)
    result = {"first_pass_images_per_second": rates[0], "images_per_second": sum(rates[1:]) / len(rates[1:]),
              "cpu_ms_per_image": sum(cpu_ms[1:]) / len(cpu_ms[1:])}
    Image.fromarray(sample_grid(batches, args.samples, data.num_classes)).save(out)
    print(
        f"data={args.name} image_size={data.image_size} batch_size={cfg.trainer.batch_size} cache={data.cache}: "
        f"first pass {result['first_pass_images_per_second']:.0f} images/s (read, decode, cache), "
        f"later passes {result['images_per_second']:.0f} images/s (what training sees each epoch; "
        f"{result['cpu_ms_per_image']:.2f} CPU-ms per image); samples in {out}"
    )
    return result


if __name__ == "__main__":
    errors.main(main, prog="seglab.data")

"""A generated stand-in for the Oxford-IIIT Pet archive, for checking training recipes without the
real data: `python -m seglab.data.pets_like DIR [--trainval 300] [--test 300] [--seed 0]`, then
`python -m seglab data=pets data.source.kind=folder data.source.path=DIR`.

What it copies from the real set, because each changed what training did there (seglab issue 11):
- the archive's layout (images/*.jpg, annotations/trimaps/*.png with 1 pet, 2 background, 3 border,
  annotations/trainval.txt and test.txt), read by the real folder source;
- hundreds of JPEG photos of their own sizes (250-500 px a side), so a batch of 16 gives ~17 steps
  an epoch, as 300 real images do;
- one large animal per photo (about a third of the pixels), a cluttered background with unlabelled
  objects whose colours overlap the animals', and a thin border band (about 2 % of the short side
  each way, ~10 % of the pixels), the rare class that dominates the mean IoU's errors.
It is easier than real photos (no real fur, poses or lighting): figures on it are upper bounds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

PET, BACKGROUND, BORDER = 1, 2, 3  # the archive's trimap values
FUR = np.array([[60, 40, 25], [120, 80, 45], [200, 150, 90], [230, 225, 215], [25, 25, 25], [140, 140, 140], [190, 110, 50]], float)
BORDER_FRACTION = 0.02  # of the short side, on each side of the outline


def _noise(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    """Smooth noise in [0, 1]: random values on a coarse grid, resized bilinearly."""
    coarse = rng.uniform(0, 255, (max(height // scale, 2), max(width // scale, 2))).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32) / 255.0


def _ellipse(yy, xx, cy, cx, ry, rx, angle) -> np.ndarray:
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def _animal(rng: np.random.Generator, yy, xx, height: int, width: int) -> np.ndarray:
    """A body, a head and two ears: a blob covering roughly a third of the picture."""
    side = min(height, width)
    cy, cx = rng.uniform(0.45, 0.6) * height, rng.uniform(0.4, 0.6) * width
    body_ry, body_rx = rng.uniform(0.22, 0.32) * side, rng.uniform(0.28, 0.4) * side
    mask = _ellipse(yy, xx, cy, cx, body_ry, body_rx, rng.uniform(-0.4, 0.4))
    hy, hx = cy - body_ry * rng.uniform(0.7, 1.0), cx + body_rx * rng.uniform(-0.6, 0.6)
    head = rng.uniform(0.12, 0.18) * side
    mask |= _ellipse(yy, xx, hy, hx, head, head * rng.uniform(0.9, 1.2), 0.0)
    for sign in (-1, 1):  # ears: small tilted ellipses on top of the head
        mask |= _ellipse(yy, xx, hy - head * 0.9, hx + sign * head * 0.55, head * 0.45, head * 0.2, sign * 0.4)
    return mask


SIDES = (250, 500)  # the real photos' range of sides, in pixels


def render(rng: np.random.Generator, sides: tuple[int, int] = SIDES) -> tuple[np.ndarray, np.ndarray]:
    """One photo (uint8 (H, W, 3)) with each side in `sides`, and its trimap (uint8 (H, W), values 1..3)."""
    height, width = (int(rng.integers(sides[0], sides[1] + 1)) for _ in range(2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Background: two colours mixed by smooth noise, then unlabelled clutter with animal-like colours too.
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    mix = _noise(rng, height, width, int(rng.integers(8, 40)))[..., None]
    image = a * (1 - mix) + b * mix
    for _ in range(int(rng.integers(2, 6))):
        shape = _ellipse(yy, xx, rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.05, 0.2) * height,
                         rng.uniform(0.05, 0.2) * width, rng.uniform(0, np.pi))
        colour = FUR[rng.integers(len(FUR))] if rng.random() < 0.5 else rng.uniform(0, 255, 3)
        image = np.where(shape[..., None], colour * (0.8 + 0.4 * _noise(rng, height, width, 16)[..., None]), image)
    pet = _animal(rng, yy, xx, height, width)
    # Fur: a base colour, large patches of a second one, fine grain, and shading across the body.
    base, patch = FUR[rng.integers(len(FUR))], FUR[rng.integers(len(FUR))]
    patches = (_noise(rng, height, width, 24) > rng.uniform(0.5, 0.8))[..., None]
    fur = np.where(patches, patch, base) * (0.75 + 0.5 * _noise(rng, height, width, 2)[..., None])
    fur *= 0.7 + 0.5 * (yy / height)[..., None] * rng.uniform(0.2, 1.0)
    image = np.where(pet[..., None], fur, image)
    image += rng.normal(0, 6, image.shape)
    # The trimap's border: a band straddling the outline.
    band = 2 * max(1, round(BORDER_FRACTION * min(height, width))) + 1
    pet_image = Image.fromarray(pet.astype(np.uint8) * 255)
    outer = np.asarray(pet_image.filter(ImageFilter.MaxFilter(band))) > 0
    inner = np.asarray(pet_image.filter(ImageFilter.MinFilter(band))) > 0
    trimap = np.full((height, width), BACKGROUND, np.uint8)
    trimap[pet] = PET
    trimap[outer & ~inner] = BORDER
    return np.clip(image, 0, 255).astype(np.uint8), trimap


def write_archive(root: str | Path, trainval: int = 300, test: int = 300, seed: int = 0,
                  sides: tuple[int, int] = SIDES) -> Path:
    """The archive layout under `root`; names `Breed_<i>` (trainval first, then test).  Smaller
    `sides` make quick test data; training resizes to data.image_size either way."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"Breed_{i}" for i in range(trainval + test)]
    for name in names:
        image, trimap = render(rng, sides)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", "JPEG", quality=90)
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
    # `name class species breed`, as in the archive's list files
    lines = lambda ns: "".join(f"{n} {i % 37 + 1} {i % 2 + 1} {i % 25 + 1}\n" for i, n in enumerate(ns))
    (root / "annotations" / "trainval.txt").write_text(lines(names[:trainval]))
    (root / "annotations" / "test.txt").write_text(lines(names[trainval:]))
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seglab.data.pets_like", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--trainval", type=int, default=300)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", type=int, nargs=2, default=SIDES, metavar=("MIN", "MAX"), help="photo sides in pixels")
    args = parser.parse_args(argv)
    root = write_archive(args.directory, args.trainval, args.test, args.seed, tuple(args.sides))
    print(f"{args.trainval} trainval + {args.test} test images in {root}; train with:\n"
          f"  python -m seglab data=pets data.source.kind=folder data.source.path={root}")


if __name__ == "__main__":
    main()

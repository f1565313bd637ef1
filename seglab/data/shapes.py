"""Built-in synthetic segmentation set: seeded, download-free, shaped like Oxford-IIIT Pet trimaps.

Each image has a textured background and one to `max_objects` objects (ellipses, rotated
rectangles, triangles, stars/blobs) with their own colour and texture, possibly occluding
each other.  Labels follow the pets trimaps after seglab's shift:
0 object, 1 background, 2 boundary (a band `boundary_width` pixels wide straddling the
outline of the union of objects; the rare class, as in the trimaps).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from seglab.config.data import plain, size_of
from seglab.data import Provenance, Splits

OBJECT, BACKGROUND, BOUNDARY = 0, 1, 2
SHAPES = ("ellipse", "rectangle", "triangle", "star")


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """A (H, W) pattern in [-1, 1]: stripes, checks, smooth waves or noise."""
    kind = rng.integers(4)
    freq = rng.uniform(2, 8) * 2 * np.pi / size
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == 0:
        return np.sign(np.sin(u * freq))
    if kind == 1:
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        return np.sign(np.sin(u * freq) * np.sin(v * freq))
    if kind == 2:
        return np.sin(u * freq + rng.uniform(0, 2 * np.pi))
    return rng.uniform(-1, 1, yy.shape)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _shape_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    cy, cx = rng.uniform(0.2, 0.8, 2) * np.array(size)
    radius = rng.uniform(0.12, 0.3) * min(size)
    angle = rng.uniform(0, 2 * np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    kind = SHAPES[rng.integers(len(SHAPES))]
    if kind == "ellipse":
        a, b = radius, radius * rng.uniform(0.5, 1.0)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == "rectangle":
        a, b = radius, radius * rng.uniform(0.4, 1.0)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    theta = np.arctan2(v, u)
    r = np.hypot(u, v)
    if kind == "triangle":
        # A regular triangle: distance to the centre along the direction of the nearest edge normal.
        sector = np.mod(theta, 2 * np.pi / 3) - np.pi / 3
        return r * np.cos(sector) <= radius * 0.6
    points = rng.integers(4, 8)
    return r <= radius * (0.75 + 0.25 * np.cos(points * theta))


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation with a 3x3 square, `steps` times (no SciPy needed)."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1)
        h, w = out.shape
        out = np.zeros_like(out)
        for dy in range(3):
            for dx in range(3):
                out |= padded[dy : dy + h, dx : dx + w]
    return out


def render(rng: np.random.Generator, size, max_objects: int, boundary_width: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W, 3), mask uint8 (H, W)) pair; `size`: one side or (H, W)."""
    size = size_of(size)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    base, other = _colour(rng), _colour(rng)
    pattern = (_texture(rng, yy, xx, min(size))[..., None] + 1) / 2
    image = base * (1 - pattern * 0.5) + other * pattern * 0.5
    objects = np.zeros(size, bool)
    for _ in range(rng.integers(1, max_objects + 1)):
        shape = _shape_mask(rng, yy, xx, size)
        colour, accent = _colour(rng), _colour(rng)
        tex = (_texture(rng, yy, xx, min(size))[..., None] + 1) / 2
        strength = rng.uniform(0.1, 0.6)
        fill = colour * (1 - tex * strength) + accent * tex * strength
        image = np.where(shape[..., None], fill, image)
        objects |= shape
    image += rng.normal(0, rng.uniform(3, 15), image.shape)
    inner = ~_grow(~objects, boundary_width // 2)
    outer = _grow(objects, boundary_width - boundary_width // 2)
    mask = np.full(size, BACKGROUND, np.uint8)
    mask[objects] = OBJECT
    mask[outer & ~inner] = BOUNDARY
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate(count: int, size, seed: int, max_objects: int = 3, boundary_width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """`count` pairs as arrays (count, H, W, 3) uint8 and (count, H, W) uint8; `size`: one side or (H, W)."""
    rng = np.random.default_rng(seed)
    pairs = [render(rng, size, max_objects, boundary_width) for _ in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def build(image_size: int | list[int], train_size: int, val_size: int, max_objects: int = 3, boundary_width: int = 2, seed: int = 0,
          test_size: int = 0):
    """The `data=shapes` source: disjoint train, validation and (test_size > 0) test splits from
    independent seeds, generated at `image_size` (one side, or [height, width])."""


    def split(count: int, stream: int):
        images, masks = generate(count, image_size, seed * 1000 + stream, max_objects, boundary_width)
        return tf.data.Dataset.from_tensor_slices((images, masks))

    def about(stream: int) -> Provenance:
        return Provenance({"kind": "shapes", "seed": seed, "stream": stream, "image_size": plain(image_size),
                           "max_objects": max_objects, "boundary_width": boundary_width})

    return Splits(train=split(train_size, 0), val=split(val_size, 1), test=split(test_size, 2) if test_size else None,
                  about={"train": about(0), "val": about(1), **({"test": about(2)} if test_size else {})})

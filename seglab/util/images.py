"""Any image file Pillow opens, as the uint8 RGB array a model takes.  `Image.convert("RGB")` alone
clips every value above 255 of a 16- or 32-bit image to white; here deep images are scaled to 8 bits
by their bit depth instead.  Nothing here imports TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Integer grey modes deeper than 8 bits -> the largest value of their bit depth.  Pillow opens 16-bit grey
# PNG and TIFF as I;16*, and some 16-bit files (and all 32-bit integer ones) as I.
DEEP_GREY_MAX = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# What Pillow raises for a file that is not an image, or a broken one (truncated, bad checksum).
UNREADABLE = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) of an opened image (its first frame):
    - 16-bit grey (and 32-bit integer grey up to 65535) scaled by 255/65535, never clipped; 16-bit RGB
      Pillow already reads scaled to 8 bits; 32-bit float grey in [0, 1] scaled by 255;
    - grey, 1-bit, palette, CMYK, YCbCr, LAB, HSV converted by Pillow;
    - an alpha channel dropped: the colours as stored, as the training pipeline reads an RGBA image
      (tf.io.decode_image with channels=3), not composited over a background.
    ValueError for pixel values that have no 8-bit meaning (a 32-bit image above 65535, floats outside [0, 1])."""
    if image.mode in DEEP_GREY_MAX or image.mode == "F":
        values = np.asarray(image, np.float64)
        top = 1.0 if image.mode == "F" else DEEP_GREY_MAX[image.mode]
        if values.size and (values.min() < 0 or values.max() > top):
            raise ValueError(f"{image.mode} pixels range {values.min():g}..{values.max():g}, outside 0..{top:g}; "
                             "save it as an 8- or 16-bit image")
        grey = np.round(values * (255.0 / top)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette's transparency is kept apart from its colours, then dropped below
    if image.mode in ALPHA_MODES:
        image = image.convert("RGBA")
        return np.asarray(image)[..., :3].copy()
    return np.asarray(image.convert("RGB"))


def read_rgb(path: Path) -> np.ndarray:
    """The image file at `path` as uint8 (H, W, 3) (see `to_rgb`); one of UNREADABLE for anything
    that is not a readable image."""
    with Image.open(path) as image:
        return to_rgb(image)


def not_an_image(path: Path) -> str | None:
    """Why `path` is not an image, from its header alone (no pixels decoded); None when it looks like one."""
    try:
        with Image.open(path):
            return None
    except UNREADABLE as err:
        return why_unreadable(err)


def why_unreadable(err: BaseException) -> str:
    """The first line of Pillow's error, or its type when it has no message."""
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


JPEG_END = b"\xff\xd9"  # the EOI marker that ends every complete JPEG


def ends_like_jpeg(path: Path) -> bool:
    """Whether the file ends with JPEG's end-of-image marker: two bytes read instead of a full decode."""
    with open(path, "rb") as f:
        f.seek(-len(JPEG_END), os.SEEK_END)
        return f.read() == JPEG_END

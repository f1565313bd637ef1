"""`python -m seglab.predict` with a model from the tracking stack (runs:/ URI through the server).
The main test calls the entry point in this process (TensorFlow is loaded once); the last one runs
the command line."""

import resource
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLI_ENV, inherited_env, run_module


def predict_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return run_module("seglab.predict", *args, cwd=cwd)


@pytest.mark.slow
def test_predict_writes_a_mask_and_an_overlay_per_image_at_its_own_size(tracking_stack, stack_run, tmp_path, capsys, caplog):
    from seglab.cli import predict

    run_id, _, _ = stack_run
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    exact = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # the model's own input size
    Image.fromarray(exact).save(images / "exact.png")
    Image.fromarray(rng.integers(0, 256, (41, 77, 3), dtype=np.uint8)).save(images / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, (90, 20), dtype=np.uint8)).save(images / "sub" / "grey.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(images / "wide.png")  # same stem as wide.jpg
    (images / "notes.txt").write_text("not an image")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    out = tmp_path / "out"
    code = predict.main([f"model_uri=runs:/{run_id}/model", f"input={images}", f"output={out}", "batch_size=2",
                         f"tracking.uri={tracking_stack.uri}"])
    assert code == 0
    for relative, (height, width) in {"exact.png": (32, 32), "wide.jpg": (41, 77), "wide.png": (30, 30), "sub/grey.png": (90, 20)}.items():
        mask = np.asarray(Image.open(out / f"{relative}_mask.png"))
        overlay = Image.open(out / f"{relative}_overlay.png")
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 1, 2}, relative
        assert overlay.size == (width, height) and overlay.mode == "RGB", relative
    for name in ("notes.txt", "broken.png"):
        assert f"skipped {images / name}: not a readable image" in caplog.text
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().out
    # The mask is the model's own prediction (no resizing at the model's input size).
    import mlflow

    mlflow.set_tracking_uri(tracking_stack.uri)
    model = mlflow.keras.load_model(f"runs:/{run_id}/model")
    expected = np.argmax(model.predict(exact[None].astype(np.float32) / 255.0, verbose=0)[0], axis=-1)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "exact.png_mask.png")), expected)


def test_predict_command_line_names_a_missing_input(tmp_path):
    done = predict_cli("model_uri=runs:/0/model", f"input={tmp_path}/nowhere", "output=out", cwd=tmp_path)
    assert done.returncode == 2
    assert f"input={tmp_path}/nowhere does not exist" in done.stderr


def _brightness_model():
    """A 32 px segmenter whose mask follows brightness by construction (class 0 where R+G+B > 1.5 in unit
    range, class 2 where darker), so a picture read wrongly shows in its mask whatever the random seed."""
    import keras

    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.layers[-1].set_weights([np.array([[[[1.0, 0.0, -1.0]] * 3]], np.float32), np.array([-1.5, 0.0, 1.5], np.float32)])
    return model


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (grey (H, W) or RGB (H, W, 3) uint16), written by hand: Pillow writes 16-bit grey only."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_predict_reads_deep_palette_alpha_grey_and_cmyk_images_as_their_8_bit_rgb_equivalent(tmp_path, caplog):
    """Each file holds the same picture as an 8-bit RGB array; its mask must be that array's mask.
    Before, a 16-bit grey image was clipped to white (a mask of a white square)."""
    import mlflow

    from seglab import inference
    from seglab.cli import predict
    model = _brightness_model()
    mlflow.tensorflow.save_model(model, str(tmp_path / "model"))
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (40, 24), dtype=np.uint8)
    rgb = palette[index]  # 16 colours: a palette image can hold it exactly
    grey = rng.integers(0, 256, (40, 24), dtype=np.uint8)
    as_rgb = np.repeat(grey[..., None], 3, axis=-1)
    images = tmp_path / "images"
    images.mkdir()
    equivalent = {}

    def save(name: str, image: Image.Image, same_as: np.ndarray) -> None:
        image.save(images / name)
        equivalent[name] = same_as

    (images / "grey16.png").write_bytes(_png16(grey.astype(np.uint16) * 257))
    equivalent["grey16.png"] = as_rgb
    (images / "rgb16.png").write_bytes(_png16(rgb.astype(np.uint16) * 257))
    equivalent["rgb16.png"] = rgb
    paletted = Image.fromarray(index, "P")
    paletted.putpalette(palette.ravel().tolist())
    save("palette.png", paletted, rgb)
    paletted.info["transparency"] = 0
    save("palette_transparent.png", paletted, rgb)
    save("rgba.png", Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (40, 24), dtype=np.uint8)])), rgb)  # alpha dropped
    save("grey.png", Image.fromarray(grey), as_rgb)
    save("grey_alpha.png", Image.fromarray(np.dstack([grey, np.full_like(grey, 9)]), "LA"), as_rgb)
    save("bilevel.png", Image.fromarray(grey > 127).convert("1"), np.repeat(np.where(grey > 127, 255, 0).astype(np.uint8)[..., None], 3, -1))
    save("cmyk.tif", Image.fromarray(rgb).convert("CMYK"), rgb)  # Pillow's CMYK round trip is exact
    Image.fromarray(np.full((4, 4), 3.5, np.float32), "F").save(images / "float.tif")

    out = tmp_path / "out"
    assert predict.main([f"model_uri={tmp_path / 'model'}", f"input={images}", f"output={out}",
                         f"tracking.uri=sqlite:///{tmp_path}/m.db"]) == 0
    expected = dict(zip(equivalent, inference.segment(model, list(equivalent.values()))))
    for name, mask in expected.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_mask.png")), mask, err_msg=name)
    white = inference.segment(model, [np.full_like(as_rgb, 255)])[0]
    assert (expected["grey16.png"] != white).any()  # the model tells the grey picture from the clipped (white) one
    assert f"skipped {images / 'float.tif'}: not a readable image (F pixels range 3.5..3.5, outside 0..1" in caplog.text


def test_a_failed_write_names_the_file_and_leaves_the_previous_output_whole(tmp_path):
    """RLIMIT_FSIZE makes the overlay's write fail with EFBIG (what a full disk's ENOSPC is to seglab); the mask,
    smaller, is written. Before, Pillow truncated the previous overlay in place and the command ended in a traceback."""
    import mlflow

    mlflow.tensorflow.save_model(_brightness_model(), str(tmp_path / "model"))
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)).save(images / "noise.png")
    out.mkdir()
    (out / "noise.png_overlay.png").write_bytes(b"previous overlay")
    limit = 3_000_000  # the overlay of 1500x1500 noise takes about 7 MB; its mask of three labels and a new store 1 MB

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "seglab.predict", f"model_uri={tmp_path / 'model'}", f"input={images}",
                           f"output={out}", f"tracking.uri=sqlite:///{tmp_path}/m.db"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**inherited_env(), **CLI_ENV}, preexec_fn=small_files)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"seglab.predict: {out / 'noise.png_overlay.png'}: File too large"), done.stderr
    assert "Traceback" not in done.stderr
    assert (out / "noise.png_overlay.png").read_bytes() == b"previous overlay"
    assert Image.open(out / "noise.png_mask.png").size == (1500, 1500)
    assert sorted(p.name for p in out.iterdir()) == ["noise.png_mask.png", "noise.png_overlay.png"]  # no temporary left

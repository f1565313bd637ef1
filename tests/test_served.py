"""The served model (seglab.tracking.served) given what a client should not send: each answer is an
MlflowException that `mlflow models serve` turns into HTTP 400 with a message saying what to send, never
an unexpected error with a stack trace.  A tiny real model, logged and loaded through MLflow's pyfunc;
the REST server itself is tested in test_registry_serving.py."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from seglab.tracking import served
from tests.conftest import build_model


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height RGB pixels, and no pixel data: a
    decompression bomb needs only a few bytes more."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/m.db")
    experiment = mlflow.create_experiment("served", artifact_location=(tmp / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = served.log_served_model(build_model("unet", 3, 16, base_filters=2, depth=1, dropout=0.0), "served")
    return info.model_uri


def refusal(model, frame: pd.DataFrame) -> str:
    with pytest.raises(MlflowException) as refused:
        model.predict(frame)
    assert refused.value.get_http_status_code() == 400, refused.value.message
    return refused.value.message


def test_the_served_model_refuses_what_is_not_an_image_in_one_message_each(model_uri):
    model = mlflow.pyfunc.load_model(model_uri)
    good = png(np.zeros((12, 20, 3), np.uint8))
    answer = model.predict(pd.DataFrame({"image": [good]}))
    assert (answer["height"][0], answer["width"][0]) == (12, 20)
    for value, what in [(b"not an image", "image 0 of the request is not a readable image"),
                        ("%%% not base64", "image 0 of the request is not base64"),
                        (b"", "image 0 of the request is empty"),
                        (good[: len(good) // 2], "image 0 of the request is not a readable image")]:
        message = refusal(model, pd.DataFrame({"image": [value]}))
        assert what in message and "send PNG or JPEG file bytes" in message, message
    message = refusal(model, pd.DataFrame({"image": [good, None]}))
    assert "image 1 of the request is empty" in message
    # Not a column of file bytes (pixels as numbers, another column): MLflow's signature check answers.
    assert "image" in refusal(model, pd.DataFrame({"pixels": [good]}))
    refusal(model, pd.DataFrame({"image": [[0.5, 0.5, 0.5]]}))


def test_an_image_of_more_pixels_than_the_limit_is_refused_from_its_header(model_uri):
    model = mlflow.pyfunc.load_model(model_uri)
    assert model.model_config == {"max_pixels": served.MAX_PIXELS, "resize": "stretch"}  # resize: the training's data.resize
    side = int(served.MAX_PIXELS ** 0.5) + 1  # one row of pixels over: refused without decoding 75 MB
    message = refusal(model, pd.DataFrame({"image": [png_header_only(side, side)]}))
    assert f"image 0 of the request is {side}x{side} = {side * side:,} pixels" in message
    assert f"limit of {served.MAX_PIXELS:,}" in message, message
    message = refusal(model, pd.DataFrame({"image": [png_header_only(100_000, 100_000)]}))  # past Pillow's own bomb limit
    assert f"claims more than {served.MAX_PIXELS:,} pixels" in message, message

    smaller = mlflow.pyfunc.load_model(model_uri, model_config={"max_pixels": 100})  # a server's own limit
    message = refusal(smaller, pd.DataFrame({"image": [png(np.zeros((10, 11, 3), np.uint8))]}))
    assert "10x11" not in message and "11x10 = 110 pixels" in message and "limit of 100" in message, message
    assert len(smaller.predict(pd.DataFrame({"image": [png(np.zeros((10, 10, 3), np.uint8))]}))) == 1


def test_base64_text_is_decoded_and_what_is_not_is_named():
    text = base64.b64encode(png(np.zeros((5, 7, 3), np.uint8))).decode()
    assert served.decode(text, 0).shape == (5, 7, 3)
    with pytest.raises(MlflowException, match="image 3 of the request holds 'int' data, not file bytes"):
        served.decode(5, 3)


def test_a_16_bit_grey_image_is_scaled_to_8_bits_as_predict_reads_it_not_clipped():
    grey = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    decoded = served.decode(buffer.getvalue(), row=0)
    expected = np.round(grey / 65535 * 255).astype(np.uint8)
    assert decoded.shape == (48, 64, 3) and (decoded == expected[..., None]).all()
    assert (decoded == 255).mean() < 0.01  # clipped, nearly every pixel would be white


def test_the_served_model_takes_slide_mode_and_flip_as_predict_does(model_uri):
    from seglab import inference

    model = mlflow.pyfunc.load_model(model_uri)
    big = np.random.default_rng(5).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    answer = model.predict(pd.DataFrame({"image": [png(big)]}), params={"mode": "slide", "stride": 8, "flip": True})
    assert (answer["height"][0], answer["width"][0]) == (40, 56)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"][0]))))
    (expected,) = inference.segment(served.keras_model_of(model), [big], mode="slide", stride=8, flip=True)
    assert (mask == expected).all()
    with pytest.raises(MlflowException, match="mode=tiles"):
        model.predict(pd.DataFrame({"image": [png(big)]}), params={"mode": "tiles"})

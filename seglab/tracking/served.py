"""The served model: an MLflow pyfunc model that takes encoded images and answers label masks, so
`mlflow models serve` answers what a real client sends (docs/serving.md).

Input: a column `image` of encoded images (PNG, JPEG, or anything Pillow reads; grey and RGBA are
converted to RGB), any size up to `MAX_PIXELS`; in JSON each is base64 (MLflow decodes binary columns).  Output, one row
per image: `mask`, the label map at the image's own size as a greyscale PNG, base64; `height`,
`width`; and with the parameter `scores=true`, `scores`: one greyscale PNG per class (base64) of that
class's softmax probability x 255 at the image's size.  Preprocessing is `seglab.inference.segment`'s,
the one used by `python -m seglab.predict` (the image brought to the model's (H, W) as its training's
`data.resize` did, kept in the `model_config`; masks back to the image's size nearest).
The Keras model travels inside as a `.keras` file and is what `tracking.load_model` unwraps for
predict and evaluate.
"""

# Lazy imports: MLflow imports this module to serve the model; TensorFlow loads when the model is loaded.

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image, UnidentifiedImageError

from seglab.config import inference as inference_config
from seglab.config.check import ConfigError
from seglab.config.inference import InferenceOptions
from seglab.models import inference_model
from seglab.util import images

KERAS_ARTIFACT = "keras_model"
BATCH = 8  # images per forward pass: a request of many large images must not need all of them in memory at once
# The most pixels (width x height) one image of a request may have; larger ones are refused from the file's
# header, before they are decoded (a decompression bomb: a small file of a huge image).  25 M takes a
# 24-megapixel camera photo; decoded it is 75 MB of RGB, and its mask and per-class scores are as large again.
# Logged as the served model's `model_config` (`max_pixels`), so a server can be loaded with another.
MAX_PIXELS = 25_000_000
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image")]),
    outputs=Schema([ColSpec("string", "mask"), ColSpec("long", "height"), ColSpec("long", "width"),
                    ColSpec(Array("string"), "scores", required=False)]),
    # mode/stride/flip: as seglab.predict's inference.* (stride 0: half the model's input size).
    params=ParamSchema([ParamSpec("scores", "boolean", False), ParamSpec("mode", "string", "resize"),
                        ParamSpec("stride", "long", 0), ParamSpec("flip", "boolean", False)]),
)


def png_base64(array: np.ndarray) -> str:

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bad(row: int, what: str) -> MlflowException:
    return MlflowException(f"image {row} of the request {what}: send PNG or JPEG file bytes, base64-encoded in JSON "
                           "(docs/serving.md).", INVALID_PARAMETER_VALUE)


def decode(data, row: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes (or their base64 text) -> uint8 RGB (H, W, 3).  Anything else, an image
    that does not decode, or one of more than `max_pixels` pixels is refused with a message naming the
    row (a 400 from `mlflow models serve`, never a stack trace)."""
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except ValueError as err:
            raise _bad(row, f"is not base64 ({err})") from None
    if data is None or (isinstance(data, float) and np.isnan(data)) or data == b"":  # pandas holds a missing value as NaN
        raise _bad(row, "is empty")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _bad(row, f"holds {type(data).__name__!r} data, not file bytes")
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            _check_pixels(image.size, row, max_pixels)
            return images.to_rgb(image)  # 16-bit scaled, palette, grey and alpha read as seglab.predict reads them
    except Image.DecompressionBombError:  # Pillow's own limit, above ours: the header claims a huge image
        raise _bad(row, f"claims more than {max_pixels:,} pixels") from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _bad(row, f"is not a readable image ({err})") from None


def _check_pixels(size: tuple[int, int], row: int, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise MlflowException(
            f"image {row} of the request is {width}x{height} = {width * height:,} pixels, more than the served model's "
            f"limit of {max_pixels:,} (max_pixels, docs/serving.md): send it scaled down (the model sees it resized anyway).",
            INVALID_PARAMETER_VALUE,
        )


class ImageSegmenter(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import keras

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        # A model logged before the limit (or data.resize) existed has no model_config: it gets the default.
        self.max_pixels = int((context.model_config or {}).get("max_pixels", MAX_PIXELS))
        self.resize = str((context.model_config or {}).get("resize", "stretch"))

    # pd.DataFrame: the signature above is explicit; a hint MLflow cannot infer one from keeps it from
    # printing its advice to add hints every time the class is defined.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        from seglab.inference import segment

        if "image" not in getattr(model_input, "columns", ()):
            raise MlflowException("the request needs a column `image` of encoded images (docs/serving.md)", INVALID_PARAMETER_VALUE)
        with_scores = bool((params or {}).get("scores", False))
        options = inference_options(params or {}, min(self.model.input_shape[1:3]))
        images = [decode(data, row, self.max_pixels) for row, data in enumerate(model_input["image"])]
        rows = []
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            found = segment(self.model, chunk, scores=with_scores, resize=self.resize, **options)
            masks, probabilities = found if with_scores else (found, None)
            for i, mask in enumerate(masks):
                row = {"mask": png_base64(mask), "height": mask.shape[0], "width": mask.shape[1]}
                if with_scores:
                    scaled = np.round(np.clip(probabilities[i], 0, 1) * 255).astype(np.uint8)
                    row["scores"] = [png_base64(scaled[..., c]) for c in range(scaled.shape[-1])]
                rows.append(row)
        return pd.DataFrame(rows, columns=["mask", "height", "width", *(["scores"] if with_scores else [])])


def inference_options(params: dict, window: int) -> dict:
    """segment()'s mode, stride and flip from the request's params; a 400 naming a wrong one."""
    options = InferenceOptions(str(params.get("mode") or "resize"), int(params.get("stride") or 0) or None,
                               bool(params.get("flip", False)))
    try:
        inference_config.check(options, prefix="params ")
        stride = inference_config.slide_stride(options.stride, window, "params ") if options.mode == "slide" else None
    except ConfigError as err:
        raise MlflowException(f"{err} (docs/serving.md)", INVALID_PARAMETER_VALUE) from None
    return {"mode": options.mode, "stride": stride, "flip": options.flip}


def input_example(height: int, width: int | None = None):
    """One encoded image at the model's input size (height, width; one side: a square), as a client would send it."""

    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width or height, 3), 128, np.uint8)).save(buffer, "PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def log_served_model(keras_model, name: str, step: int = 0, resize: str = "stretch"):
    """Log `keras_model` (a Keras model) wrapped as the image-taking pyfunc model; its ModelInfo.
    `step`: the epoch whose run metrics MLflow links to the logged model; `resize`: the training's data.resize,
    kept in the model's `model_config` so that every user of the model brings images to it the same way."""
    import keras
    import tensorflow as tf

    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"pillow=={Image.__version__}",
                    f"mlflow=={mlflow.__version__}", "pandas", *keras_hub_requirement(keras_model)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        inference_model(keras_model).save(path)  # a file of the temporary directory: no other reader
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name("served_entry.py")), artifacts={KERAS_ARTIFACT: str(path)}, signature=SIGNATURE,
            input_example=input_example(*map(int, keras_model.input_shape[1:3])),
            model_config={"max_pixels": MAX_PIXELS, "resize": resize},
            pip_requirements=requirements, step=step,
        )


def keras_hub_requirement(keras_model) -> list[str]:
    """keras-hub, pinned, for a model with KerasHub layers (model=deeplabv3plus, segformer): Keras imports
    their classes from it when the served model loads."""
    modules = {type(layer).__module__.split(".")[0] for layer in keras_model._flatten_layers()}
    if "keras_hub" not in modules:
        return []
    import keras_hub

    return [f"keras-hub=={keras_hub.__version__}"]


def resize_of(model_info) -> str:
    """The data.resize a logged model was trained with (its served model's model_config), stretch when it
    does not say (a Keras-flavour model, or one logged before the key)."""
    return str((model_info.flavors.get("python_function", {}).get("config") or {}).get("resize", "stretch"))


def keras_model_of(pyfunc_model):
    """The Keras model inside a loaded served model, or None if it is another pyfunc model."""
    inner = pyfunc_model.unwrap_python_model() if hasattr(pyfunc_model, "unwrap_python_model") else None
    return getattr(inner, "model", None) if isinstance(inner, ImageSegmenter) else None

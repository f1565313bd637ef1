"""The served model: an MLflow pyfunc model that takes encoded images and answers label masks, so
`mlflow models serve` answers what a real client sends (docs/serving.md).

Input: a column `image` of encoded images (PNG, JPEG, or anything Pillow reads; grey and RGBA are
converted to RGB), any size; in JSON each is base64 (MLflow decodes binary columns).  Output, one row
per image: `mask`, the label map at the image's own size as a greyscale PNG, base64; `height`,
`width`; and with the parameter `scores=true`, `scores`: one greyscale PNG per class (base64) of that
class's softmax probability x 255 at the image's size.  Preprocessing is `seglab.inference.segment`'s,
the one used by `python -m seglab.predict` (resize bilinear to the model's input, masks back nearest).
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

from seglab.engine import checkpoint

KERAS_ARTIFACT = "keras_model"
BATCH = 8  # images per forward pass: a request of many large images must not need all of them in memory at once
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image")]),
    outputs=Schema([ColSpec("string", "mask"), ColSpec("long", "height"), ColSpec("long", "width"),
                    ColSpec(Array("string"), "scores", required=False)]),
    params=ParamSchema([ParamSpec("scores", "boolean", False)]),
)


def png_base64(array: np.ndarray) -> str:

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode(data, row: int) -> np.ndarray:
    """Encoded image bytes (or their base64 text) -> uint8 RGB (H, W, 3); a clear error naming the row."""

    if isinstance(data, str):
        data = base64.b64decode(data)
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise MlflowException(
            f"image {row} of the request is not a readable image ({err}): send PNG or JPEG file bytes, base64-encoded in JSON.",
            INVALID_PARAMETER_VALUE,
        ) from None


class ImageSegmenter(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import keras

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    # pd.DataFrame: the signature above is explicit; a hint MLflow cannot infer one from keeps it from
    # printing its advice to add hints every time the class is defined.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        from seglab.inference import segment

        if "image" not in getattr(model_input, "columns", ()):
            raise MlflowException("the request needs a column `image` of encoded images (docs/serving.md)", INVALID_PARAMETER_VALUE)
        with_scores = bool((params or {}).get("scores", False))
        images = [decode(data, row) for row, data in enumerate(model_input["image"])]
        rows = []
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            masks, probabilities = segment(self.model, chunk, scores=True) if with_scores else (segment(self.model, chunk), None)
            for i, mask in enumerate(masks):
                row = {"mask": png_base64(mask), "height": mask.shape[0], "width": mask.shape[1]}
                if with_scores:
                    scaled = np.round(np.clip(probabilities[i], 0, 1) * 255).astype(np.uint8)
                    row["scores"] = [png_base64(scaled[..., c]) for c in range(scaled.shape[-1])]
                rows.append(row)
        return pd.DataFrame(rows, columns=["mask", "height", "width", *(["scores"] if with_scores else [])])


def input_example(image_size: int):
    """One encoded image at the model's input size, as a client would send it."""

    buffer = io.BytesIO()
    Image.fromarray(np.full((image_size, image_size, 3), 128, np.uint8)).save(buffer, "PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def log_served_model(keras_model, name: str, step: int = 0):
    """Log `keras_model` (a Keras model) wrapped as the image-taking pyfunc model; its ModelInfo.
    `step`: the epoch whose run metrics MLflow links to the logged model."""
    import keras
    import tensorflow as tf


    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        checkpoint.save_model(path, keras_model)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name("served_entry.py")), artifacts={KERAS_ARTIFACT: str(path)}, signature=SIGNATURE,
            input_example=input_example(int(keras_model.input_shape[1])),
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"pillow=={Image.__version__}",
                              f"mlflow=={mlflow.__version__}", "pandas"], step=step,
        )


def keras_model_of(pyfunc_model):
    """The Keras model inside a loaded served model, or None if it is another pyfunc model."""
    inner = pyfunc_model.unwrap_python_model() if hasattr(pyfunc_model, "unwrap_python_model") else None
    return getattr(inner, "model", None) if isinstance(inner, ImageSegmenter) else None

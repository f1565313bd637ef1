"""A trained model out of MLflow into a deployment format, with Keras 3's own exporters
(`keras.Model.export`), and checked: the exported file, run by its own runtime, against the Keras
model's logits on a sample input.

- `onnx`: `model.onnx` (tf2onnx converts the traced TensorFlow function), run with onnxruntime;
- `litert`: `model.tflite` (TensorFlow's TFLite converter), run with the LiteRT interpreter (the
  `ai-edge-litert` package, in the `export` extra where it has a wheel; else TensorFlow's deprecated copy);
- `saved_model`: a TensorFlow SavedModel directory, endpoint `serve`, run with `tf.saved_model.load`.

Every file takes what the Keras model takes, (N, H, W, 3) float32 RGB in [0, 1] (H, W: data.image_size),
and answers (N, H, W, classes) float32 logits.
"""

# Lazy imports: onnxruntime and ai_edge_litert (the optional `export` extra) only for their format.

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from seglab import console

log = logging.getLogger(__name__)

# format -> (Keras' format name, what `output` receives)
FORMATS = {"onnx": ("onnx", "model.onnx"), "litert": ("litert", "model.tflite"), "saved_model": ("tf_saved_model", "saved_model")}
SAMPLE_SEED = 0


@dataclass(frozen=True)
class Exported:
    path: Path  # the file (or, for saved_model, the directory) written
    max_abs_difference: float  # between its logits and the Keras model's on the sample input


class InferenceCall(keras.Model):
    """The model called as `model(x, training=False)`.  Keras' ONNX and SavedModel exporters trace
    `model.call` (no training flag): KerasHub's layers then ran differently (DeepLabV3+'s logits 2.4
    off), while its LiteRT exporter, which traces `model(x, training=False)`, matched."""

    def __init__(self, model: keras.Model):
        super().__init__(name=model.name)
        self.inner = model

    def call(self, x):
        return self.inner(x, training=False)


def sample_input(model: keras.Model) -> np.ndarray:
    """One image the model takes, uniform in [0, 1], the same on every call."""
    return np.random.default_rng(SAMPLE_SEED).uniform(size=(1, *model.input_shape[1:])).astype(np.float32)


def export(model: keras.Model, fmt: str, output: Path, batch_size: int | None = None) -> Exported:
    """Write `model` as `fmt` under `output` and compare the file's logits with the model's.
    `batch_size`: the batch the file takes, or None for any."""
    keras_format, name = FORMATS[fmt]
    path = output / name
    x = sample_input(model)
    # A tensor, not the array: a model loaded from a .keras file warns of an input structure mismatch for an array.
    expected = np.asarray(model(tf.constant(x), training=False), np.float32)
    output.mkdir(parents=True, exist_ok=True)
    wrapped = InferenceCall(model)
    wrapped(tf.constant(x))  # built and called: what the exporters ask of a model
    signature = [tf.TensorSpec((batch_size, *model.input_shape[1:]), tf.float32, name="image")]
    with console.native_quiet():  # the converters' and runtimes' C++ log lines
        wrapped.export(str(path), format=keras_format, verbose=False, input_signature=signature)
        got = RUNNERS[fmt](path, x)
    return Exported(path, float(np.max(np.abs(got - expected))))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime  # only for format=onnx (the `export` extra)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x})
    return output


def litert_interpreter(path: Path):
    """The LiteRT interpreter of `path`: the maintained `ai_edge_litert` package's, else TensorFlow's copy, whose
    deprecation notice ("tf.lite.Interpreter is deprecated ... use the LiteRT interpreter") is then all it adds."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # the `export` extra, on the platforms it has wheels for
    except ImportError:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated", category=UserWarning)
            return tf.lite.Interpreter(model_path=str(path))
    return Interpreter(model_path=str(path))


def run_litert(path: Path, x: np.ndarray) -> np.ndarray:
    interpreter = litert_interpreter(path)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def run_saved_model(path: Path, x: np.ndarray) -> np.ndarray:
    loaded = tf.saved_model.load(str(path))  # held while `serve` runs: its variables belong to this object
    return np.asarray(loaded.serve(tf.constant(x)))


RUNNERS = {"onnx": run_onnx, "litert": run_litert, "saved_model": run_saved_model}

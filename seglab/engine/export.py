"""A trained model out of MLflow into a deployment format, with Keras 3's own exporters
(`keras.Model.export`), and checked: the exported file, run by its own runtime, against the Keras
model's logits on a sample input.

- `onnx`: `model.onnx` (tf2onnx converts the traced TensorFlow function), run with onnxruntime;
- `litert`: `model.tflite` (TensorFlow's TFLite converter), run with the LiteRT interpreter (the
  `ai-edge-litert` package, in the `export` extra where it has a wheel; else TensorFlow's deprecated copy);
- `saved_model`: a TensorFlow SavedModel directory, endpoint `serve`, run with `tf.saved_model.load`.

Every file takes what the Keras model takes, (N, H, W, 3) float32 RGB in [0, 1] (H, W: data.image_size),
and answers (N, H, W, classes) float32 logits.

The file (or directory) is written and checked under a temporary name beside the target and renamed
when complete (seglab/util/atomic.py): a full disk, Ctrl-C or kill -9 leaves the previous export or
none, never half of one.
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
from seglab.errors import UserError
from seglab.util import atomic

log = logging.getLogger(__name__)

# format -> (Keras' format name, what `output` receives)
FORMATS = {"onnx": ("onnx", "model.onnx"), "litert": ("litert", "model.tflite"), "saved_model": ("tf_saved_model", "saved_model")}
SAMPLE_SEED = 0


class ExportError(UserError):
    """The export could not be written (disk full, past `ulimit -f`, read-only); the previous one is as it was."""


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


def sample_input(model: keras.Model, batch_size: int = 1) -> np.ndarray:
    """A batch of images the model takes, uniform in [0, 1], the same on every call."""
    return np.random.default_rng(SAMPLE_SEED).uniform(size=(batch_size, *model.input_shape[1:])).astype(np.float32)


def export(model: keras.Model, fmt: str, output: Path, batch_size: int | None = None) -> Exported:
    """Write `model` as `fmt` under `output` and compare the file's logits with the model's.
    `batch_size`: the batch the file takes, or None for any (then checked on a batch of one)."""
    keras_format, name = FORMATS[fmt]
    path = output / name
    x = sample_input(model, batch_size or 1)  # a file made for batches of N takes nothing else
    # A tensor, not the array: a model loaded from a .keras file warns of an input structure mismatch for an array.
    expected = np.asarray(model(tf.constant(x), training=False), np.float32)
    wrapped = InferenceCall(model)
    wrapped(tf.constant(x))  # built and called: what the exporters ask of a model
    signature = [tf.TensorSpec((batch_size, *model.input_shape[1:]), tf.float32, name="image")]
    differences = []

    def write_and_check(tmp: str) -> None:
        try:
            with console.native_quiet():  # the converters' C++ log lines
                wrapped.export(tmp, format=keras_format, verbose=False, input_signature=signature)
        except tf.errors.OpError as err:  # TensorFlow's own writers (SavedModel) say "<file>; <reason>", not OSError
            if tmp not in err.message:
                raise
            raise OSError(None, err.message.rsplit("; ", 1)[-1]) from err
        with console.native_quiet():  # the runtimes' C++ log lines
            differences.append(float(np.max(np.abs(RUNNERS[fmt](Path(tmp), x) - expected))))

    try:
        (atomic.write_dir if fmt == "saved_model" else atomic.write)(path, write_and_check)
    except OSError as err:
        kept = f"the previous {path.name} is as it was" if path.exists() else f"no {path.name} was written"
        raise ExportError(f"cannot write {path} ({err.strerror or err}: disk full, past the file size limit (ulimit -f) or "
                          f"read-only?); {kept}. Free space there or give output= a directory with room.") from err
    atomic.remove(atomic.leftovers(output, name))  # of an export killed before its rename
    return Exported(path, differences[0])


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

"""Pretrained `keras.applications` encoders: where their weights come from, and their own input
preprocessing applied inside the graph (the data pipeline always delivers float RGB in [0, 1]).

`encoder.weights` is `"imagenet"` (Keras' file, from its cache or downloaded), `None` (random
initialisation, trained from scratch) or a path to a weights file of the same application built
with `include_top=False` (a `.h5` like Keras' own, or a `.weights.h5` from `save_weights`).
"""

# Lazy imports: TensorFlow only in `synchronise`, when the backend is TensorFlow (the builders also load on JAX:
# benchmarks/gpu_determinism.py).

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from seglab.errors import UserError
from seglab.models import facts
from seglab.util import net

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

# Caffe-style VGG16 preprocessing (keras.applications.vgg16.preprocess_input): BGR, 0..255,
# minus the ImageNet mean of each channel.
VGG16_MEAN_BGR = (103.939, 116.779, 123.68)


class EncoderWeightsUnavailable(UserError, RuntimeError):
    """The ImageNet weights are neither in the Keras cache nor downloadable; the message says what to do."""


class EncoderWeightsFileMissing(UserError, FileNotFoundError):
    """model.encoder.weights names a file that does not exist; the message names it and the options."""


def options(encoder: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(weights, trainable) of an `encoder:` mapping (conf/model/*.yaml holds the defaults)."""
    return encoder["weights"], bool(encoder["trainable"])


def batch_norm(momentum: float, name: str) -> keras.layers.BatchNormalization:
    """A batch-norm layer as seglab's models train them: `momentum` for the moving statistics (see
    `set_batch_norm`), synchronised when built for several replicas (`synchronise`)."""
    return keras.layers.BatchNormalization(momentum=momentum, synchronized=synchronise(), name=name)


def synchronise() -> bool:
    """Batch statistics of the global batch, all-reduced over the replicas, when the model is built in
    the scope of a strategy with more than one (train.py builds it there): N replicas then train as one
    device would on the same batch; unsynchronised, each would normalise by its own 1/N of it.  With one
    replica, Keras' ordinary layer (two-pass moments, no all-reduce).  Strategies are TensorFlow's: on another
    Keras backend (benchmarks/gpu_determinism.py builds these models on JAX) there is one replica."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync > 1


def set_batch_norm(model: keras.Model, momentum: float, frozen: bool) -> None:
    """Set the moving-statistics momentum of every BatchNormalization layer of a built application
    (keras.applications hard-codes its own, 0.999 for MobileNetV2), or freeze them.

    Why: a moving average with momentum m forgets at rate 1 - m per step, so it needs a few times
    1 / (1 - m) steps to follow the batch statistics: 1,000 steps at 0.999, more than a whole short
    training run on a few hundred images (17 steps an epoch for 300 images in batches of 16).  Until
    then inference-mode outputs, which use the moving statistics, differ from training-mode outputs,
    which use the batch's, and predictions collapse.  Frozen layers (`trainable = False`) run in
    inference mode with the statistics they were loaded with, as Keras' fine-tuning guide advises for
    pretrained weights: small batches of a new data set would otherwise overwrite good ImageNet statistics."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            layer.synchronized = synchronise()  # as `batch_norm`
            if frozen:
                layer.trainable = False


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: `$KERAS_HOME/models`, else `~/.keras/models`."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "models"


def weights_file(weights: str | None, imagenet_file: str, imagenet_subdir: str, what: str) -> str | None:
    """The weights file to load into the encoder `what`, or None for random initialisation."""
    if weights is None:
        return None
    if weights == facts.IMAGENET:
        return imagenet_weights(imagenet_file, KERAS_WEIGHTS_URL + imagenet_subdir + "/" + imagenet_file, what)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise EncoderWeightsFileMissing(
            f"model.encoder.weights={weights!r}: no such file (resolved to {path.resolve()}). Give the path of a "
            f"weights file of {what} with include_top=False, or use model.encoder.weights=imagenet or null."
        )
    return str(path)


def imagenet_weights(file_name: str, url: str, what: str) -> str:
    """Keras' ImageNet weights file: from the cache, else downloaded after a short reachability check."""
    cache_dir = keras_cache_dir()
    cached = cache_dir / file_name
    if cached.is_file():
        return str(cached)
    problem = net.unreachable(url, net.REACHABILITY_TIMEOUT_S)  # Keras' own download has no timeout and can hang offline
    if problem:
        raise EncoderWeightsUnavailable(
            f"The ImageNet weights of the {what} encoder are not available: {file_name} is not in the Keras cache "
            f"({cache_dir}) and the download cannot start ({problem}). Either download {url} and put it at "
            f"{cached} (the cache honours KERAS_HOME), or pass a local copy with model.encoder.weights=<path>, "
            f"or train the encoder from scratch with model.encoder.weights=null."
        )
    return keras.utils.get_file(file_name, url, cache_dir=str(cache_dir.parent), cache_subdir="models")


def load(application: keras.Model, path: str | None, what: str) -> None:
    """Load `path` into the `keras.applications` model, explaining a file of the wrong architecture."""
    if path is None:
        return
    try:
        application.load_weights(path)
    except OSError as err:  # h5py: a truncated or corrupt file, e.g. from an interrupted download
        raise ValueError(
            f"The weights file {path} of the {what} encoder cannot be read ({err}). It may be incomplete: delete it "
            f"and run again to download it, or pass a good copy with model.encoder.weights=<path>."
        ) from err
    except ValueError as err:
        reason = str(err).split(" Example error")[0].splitlines()[0][:200]  # Keras appends every mismatched tensor
        raise ValueError(
            f"model.encoder.weights={path!r} does not fit the {what} encoder ({reason}). The file must hold the "
            f"weights of the same application with include_top=False (and the same alpha, for MobileNetV2)."
        ) from err


def mobilenet_v2_preprocessing(x):
    """[0, 1] -> [-1, 1], as keras.applications.mobilenet_v2.preprocess_input does for 0..255."""
    return keras.layers.Rescaling(2.0, offset=-1.0, name="mobilenet_v2_preprocessing")(x)


def vgg16_preprocessing(x):
    """[0, 1] RGB -> caffe-style BGR 0..255 minus the ImageNet mean (keras.applications.vgg16.preprocess_input).

    Written with keras.ops, which a functional model saves and reloads without custom classes."""
    bgr = keras.ops.flip(x, axis=-1)
    return keras.ops.subtract(keras.ops.multiply(bgr, 255.0), np.asarray(VGG16_MEAN_BGR, np.float32))

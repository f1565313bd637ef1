"""KerasHub (keras-hub) pieces shared by the DeepLabV3+ and SegFormer builders: where a preset's
weights come from, and the ImageNet normalisation their encoders were trained with, in the graph
(the data pipeline always delivers float RGB in [0, 1]).

`model.preset` is null (random initialisation, trained from scratch), a KerasHub preset name of the
encoder (its weights come from Kaggle through `kagglehub`, or from kagglehub's cache), or the path of
a preset directory (`Backbone.save_to_preset`).  Offline, a preset neither cached nor local fails in
one line before anything is built, as `model.encoder.weights=imagenet` does (seglab/models/encoders.py).
"""

from __future__ import annotations

from pathlib import Path

import keras
import keras_hub
import numpy as np
from kagglehub.config import DEFAULT_KAGGLE_API_ENDPOINT, get_cache_folder
from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

from seglab.errors import UserError
from seglab.util import net

# ImageNet's per-channel mean and standard deviation of [0, 1] RGB: the normalisation of KerasHub's
# ResNet and MiT presets (and of torchvision and mmsegmentation's SegFormer, whose weights they hold).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KAGGLE_SCHEME = "kaggle://"


class PresetUnavailable(UserError, RuntimeError):
    """A KerasHub preset is neither cached, nor local, nor downloadable; the message says what to do."""


def imagenet_normalisation(x):
    """[0, 1] RGB -> (x - mean) / std per channel.  Written with keras.ops, which a functional model saves
    and reloads without custom classes (and tf2onnx folds into constants; a Normalization layer's
    mean and variance became inputs of the ONNX graph)."""
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return keras.ops.divide(keras.ops.subtract(x, mean), std)


def kaggle_cache_path(handle: str) -> Path:
    """Where kagglehub keeps `kaggle://owner/model/framework/variation/version` once downloaded."""
    return Path(get_cache_folder(), "models", *handle.removeprefix(KAGGLE_SCHEME).split("/"))


def check_preset(preset: str, what: str) -> None:
    """Raise PresetUnavailable unless `preset` is a local directory, in kagglehub's cache, or downloadable."""
    if Path(preset).expanduser().is_dir() or preset not in BUILTIN_PRESETS:
        return  # a local preset, or a handle KerasHub resolves (and explains) itself
    handle = BUILTIN_PRESETS[preset]["kaggle_handle"]
    cached = kaggle_cache_path(handle)
    if cached.is_dir():
        return
    problem = net.unreachable(DEFAULT_KAGGLE_API_ENDPOINT, net.REACHABILITY_TIMEOUT_S)  # kagglehub retries for minutes
    if problem:
        raise PresetUnavailable(
            f"model.preset={preset}: the KerasHub preset of the {what} encoder is not available: it is not in kagglehub's "
            f"cache ({cached}) and the download cannot start ({problem}). Either download it on a machine with network "
            f"(keras_hub.models.Backbone.from_preset({preset!r}) fills the cache; KAGGLEHUB_CACHE moves it) or save it with "
            f".save_to_preset(DIR) and pass model.preset=DIR, or train from scratch with model.preset=null."
        )


def encoder_from_preset(preset: str, size: tuple[int, int], what: str) -> keras.Model:
    """The KerasHub backbone of `preset`, with its weights, for (height, width, 3) inputs."""
    check_preset(preset, what)
    return keras_hub.models.Backbone.from_preset(preset, image_shape=(*size, 3))

"""Process-wide TensorFlow set-up for one job: seeds, op determinism, devices."""

from __future__ import annotations

import keras
import tensorflow as tf


def setup(seed: int, deterministic: bool) -> str:
    """Reset Keras state left by a previous job, seed everything, and return the device used."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
    if deterministic:
        # Every op then uses a deterministic kernel or raises; there is no way to turn it off again.
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier job in this process
            pass
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU x{len(gpus)} ({details.get('device_name', gpus[0].name)})"
    return "CPU"

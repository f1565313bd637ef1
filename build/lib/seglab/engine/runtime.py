"""Process-wide TensorFlow set-up for one job: seeds, op determinism, precision policy, devices."""

from __future__ import annotations

import keras
import tensorflow as tf

from seglab.util import threads


def setup(seed: int, deterministic: bool, precision: str = "float32") -> str:
    """Reset Keras state left by a previous job, seed everything, set the precision policy for the
    models built next, and return the device used."""
    keras.backend.clear_session()
    set_precision(precision)
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


def set_precision(policy: str) -> None:
    """Make `policy` (float32, mixed_bfloat16, mixed_float16) the dtype policy of every layer built
    from now on: variables stay float32, computations run in the policy's compute dtype.

    Set for every job, float32 included: the global policy is process state that `clear_session`
    keeps, and a sweep's next job must not inherit the previous one's.  The rest of mixed precision
    is where it belongs: each model's logits layer is float32 (its builder), losses and metrics cast
    to float32 (seglab.losses, seglab.metrics), and `compile` wraps the optimizer in a
    LossScaleOptimizer under mixed_float16 (Keras' `auto_scale_loss`), which bfloat16 does not
    need (it has float32's exponent range).
    """
    keras.mixed_precision.set_global_policy(policy)


def thread_params() -> dict[str, int]:
    """The intra-op and inter-op threads TensorFlow runs this job's ops with (`seglab.util.threads`)."""
    configured = {threads.INTRA_OP: tf.config.threading.get_intra_op_parallelism_threads(),
                  threads.INTER_OP: tf.config.threading.get_inter_op_parallelism_threads()}
    return threads.effective(configured)

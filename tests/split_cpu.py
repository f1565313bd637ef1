"""`python tests/split_cpu.py N ARGS...`: `python -m seglab ARGS...` with the CPU split into N logical
devices (tf.config.set_logical_device_configuration), so `trainer.strategy=mirrored` has N replicas
on a machine without GPUs.  The split must happen before TensorFlow starts, hence a process of its own."""

import os
import sys

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the replicas are CPUs, on a GPU machine too
import tensorflow as tf  # noqa: E402

if __name__ == "__main__":
    devices = int(sys.argv[1])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)])
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    from seglab.cli.train import cli

    cli()

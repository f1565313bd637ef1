"""Preflight for `deterministic: true`: the ops of the training step that have no deterministic GPU
kernel in TensorFlow, found in the traced graph before training starts, named with their layer.

Under `tf.config.experimental.enable_op_determinism()` such an op raises `UnimplementedError`
mid-run on a GPU, or runs on the CPU instead.  The graph is the same on every device, so the check
runs (and is tested) on a CPU too.

`NO_DETERMINISTIC_GPU_KERNEL` holds the ops whose GPU kernels refuse to run under op determinism
in the installed TensorFlow 2.20: the messages "A deterministic GPU implementation of ... is not
currently available" / "Determinism is not yet supported ..." in its kernels (`strings
_pywrap_tensorflow_internal.so`; e.g. tensorflow/core/kernels/image/resize_nearest_neighbor_op.cc),
and the scatter ops that TensorFlow runs on the CPU under determinism (TF 2.8 release notes,
"Deterministic Op Functionality").  Softmax cross-entropy is not listed: the Python API takes a
deterministic path when determinism is on (the kernel's own message says so).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import tensorflow as tf

from seglab.config.data import size_of
from seglab.errors import UserError

log = logging.getLogger(__name__)


class DeterminismError(UserError, RuntimeError):
    """The training step cannot run deterministically on this GPU; the message names the layers."""

_RESIZE_NEAREST = (
    "the gradient of nearest-neighbour resizing (tf.image.resize(method='nearest'), keras Resizing(interpolation='nearest'))",
    "upsample with Conv2DTranspose, UpSampling2D (Keras 3 repeats pixels, which is deterministic) or bilinear resizing",
)
_BINCOUNT = ("tf.math.bincount / a histogram", "count with a one-hot sum (tf.reduce_sum(tf.one_hot(...)))")
_CROP_AND_RESIZE = ("the gradient of tf.image.crop_and_resize", "crop in the tf.data pipeline, outside the training step")
_SCATTER = (
    "a scatter (tf.scatter_nd, tf.tensor_scatter_nd_*, tf.math.confusion_matrix), which runs on the CPU under op determinism",
    "use a one-hot matrix product (as seglab.metrics does for the confusion matrix)",
)
_SEGMENT = ("a segment reduction (tf.math.segment_* / unsorted_segment_*)", "use a one-hot matrix product or a dense reduction")

# op type -> (what it is, what to do)
NO_DETERMINISTIC_GPU_KERNEL: dict[str, tuple[str, str]] = {
    "ResizeNearestNeighborGrad": _RESIZE_NEAREST,
    "CropAndResizeGradImage": _CROP_AND_RESIZE,
    "CropAndResizeGradBoxes": _CROP_AND_RESIZE,
    "Bincount": _BINCOUNT,
    "DenseBincount": _BINCOUNT,
    "SparseTensorDenseMatMul": ("tf.sparse.sparse_dense_matmul", "use a dense tf.matmul"),
    "AdjustContrast": ("tf.image.adjust_contrast inside the model", "augment in the tf.data pipeline (data.augment.contrast)"),
    "AdjustContrastv2": ("tf.image.adjust_contrast inside the model", "augment in the tf.data pipeline (data.augment.contrast)"),
    "MaxPoolGradWithArgmax": ("the gradient of tf.nn.max_pool_with_argmax", "use MaxPooling2D"),
    "Dilation2DBackpropInput": ("the gradient of tf.nn.dilation2d", "use a convolution"),
    "Dilation2DBackpropFilter": ("the gradient of tf.nn.dilation2d", "use a convolution"),
    "FakeQuantWithMinMaxVarsGradient": ("fake-quantisation gradients", "train without quantisation-aware layers"),
    "FakeQuantWithMinMaxVarsPerChannelGradient": ("fake-quantisation gradients", "train without quantisation-aware layers"),
    "UnsortedSegmentSum": _SEGMENT, "UnsortedSegmentProd": _SEGMENT, "UnsortedSegmentMax": _SEGMENT,
    "UnsortedSegmentMin": _SEGMENT, "SegmentSum": _SEGMENT, "SegmentProd": _SEGMENT, "SegmentMean": _SEGMENT,
    "ScatterNd": _SCATTER, "TensorScatterAdd": _SCATTER, "TensorScatterUpdate": _SCATTER, "TensorScatterSub": _SCATTER,
    "ScatterNdAdd": _SCATTER, "ScatterNdUpdate": _SCATTER, "ResourceScatterNdAdd": _SCATTER, "ResourceScatterNdUpdate": _SCATTER,
}
# Batch norm backprop has no deterministic GPU kernel when the layer runs in inference mode (a frozen
# BatchNormalization that gradients pass through).
FUSED_BATCH_NORM_GRADS = ("FusedBatchNormGrad", "FusedBatchNormGradV2", "FusedBatchNormGradV3")
_FROZEN_BATCH_NORM = (
    "the gradient through a BatchNormalization layer in inference mode (frozen, with trainable layers before it)",
    "train the layer, or freeze everything before it too",
)


@dataclass(frozen=True)
class Finding:
    op_type: str
    layer: str  # the Keras layer whose name scope holds the op ("?" when none does)
    what: str
    fix: str

    def __str__(self) -> str:
        return f"layer {self.layer!r}: {self.op_type}, {self.what}; {self.fix}"


def training_step_ops(model, image_size) -> list[tuple[str, str, object]]:
    """(op type, op name, NodeDef) of every op in the traced training step of a compiled model
    (forward pass, loss, gradients, optimizer update, metrics), nested functions included.
    `image_size`: one side or (height, width), as data.image_size."""

    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # fit would build it the same way; no values change
    # As fit runs it: in a replica context of the strategy in scope (the default one: a plain call).
    strategy = tf.distribute.get_strategy()
    step = tf.function(lambda data: strategy.run(model.train_step, args=(data,)))
    height, width = size_of(image_size)
    spec = (tf.TensorSpec((None, height, width, 3), tf.float32), tf.TensorSpec((None, height, width), tf.int32))
    graph_def = step.get_concrete_function(spec).graph.as_graph_def()
    nodes = list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]
    return [(node.op, node.name, node) for node in nodes]


def find(model, image_size) -> list[Finding]:
    """Ops of the training step without a deterministic GPU kernel, one finding per (layer, op type)."""
    names = {layer.name for layer in _all_layers(model)}
    found: dict[tuple[str, str], Finding] = {}
    for op_type, op_name, node in training_step_ops(model, image_size):
        if op_type in NO_DETERMINISTIC_GPU_KERNEL:
            what, fix = NO_DETERMINISTIC_GPU_KERNEL[op_type]
        elif op_type in FUSED_BATCH_NORM_GRADS and not node.attr["is_training"].b:
            what, fix = _FROZEN_BATCH_NORM
        else:
            continue
        layer = _layer_of(op_name, names)
        found.setdefault((layer, op_type), Finding(op_type, layer, what, fix))
    return list(found.values())


def preflight(model, image_size, deterministic: bool) -> list[Finding]:
    """Before `fit` with `deterministic: true`: log each finding (a warning on a CPU, where the
    kernels exist; a DeterminismError on a GPU, where the step would raise mid-run)."""
    if not deterministic:
        return []

    findings = find(model, image_size)
    if not findings:
        return findings
    listed = "; ".join(str(f) for f in findings)
    message = (f"with deterministic=true, the training step has ops without a deterministic GPU kernel: {listed}. "
               "Change the model as suggested, or set deterministic=false (runs are then not reproducible).")
    if tf.config.list_physical_devices("GPU"):
        raise DeterminismError(message)
    log.warning("%s (On this CPU the run goes on; on a GPU it would stop with UnimplementedError.)", message)
    return findings


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # a nested model (e.g. a keras.applications encoder)
            yield from _all_layers(layer)


_UNIQUIFIED = re.compile(r"_\d+$")  # TensorFlow suffixes a name scope entered twice: up -> up_1


def _layer_of(op_name: str, layer_names: set[str]) -> str:
    for part in reversed(op_name.split("/")):
        if part in layer_names:
            return part
        if _UNIQUIFIED.sub("", part) in layer_names:
            return _UNIQUIFIED.sub("", part)
    return "?"

"""`trainer.strategy=multi_worker`: seglab's own training loop under tf.distribute's
MultiWorkerMirroredStrategy, in place of `model.fit`, which Keras 3 does not run under that strategy
(keras-team/keras#20585; the spike and the decision: docs/performance.md#multi-process-training).

The same model, loss, optimizer, data and callbacks as `fit`: each worker reads its slice of every
global batch (`experimental_distribute_dataset`, sharded by data), the step runs in `strategy.run`,
Keras' optimizer all-reduces the gradients (SUM of the per-replica losses, which seglab's losses
already divide by the number of replicas), so every worker applies the same update.  The epoch's
logs carry the keys and definitions `fit` gives: `loss` the batch-size-weighted mean of the batch
losses, the segmentation metrics computed by `seglab.metrics`' own metric objects from the summed
confusion matrix, and the same with `val_`.  Supported: every callback of
`seglab.engine.callbacks.for_training` (each sees the hooks fit calls it with); refused before
TensorFlow loads: XLA and steps_per_execution > 1 (seglab.engine.distribute.check).

Resuming: only the chief looks for the run to continue and loads its checkpoint (seglab.engine.lifecycle);
`from_chief` then gives every worker the chief's variables and epoch, so all replicas start the same step.
A worker lost mid-run (`WorkerLost`) ends the chief's run KILLED, so re-running the job continues it."""

from __future__ import annotations

import hashlib
import logging

import keras
import numpy as np
import tensorflow as tf

from seglab import metrics
from seglab.engine import distribute

log = logging.getLogger(__name__)


def fit(model: keras.Model, loss, strategy, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset,
        fit_callbacks: list[keras.callbacks.Callback], epochs: int, first_epoch: int, steps_per_epoch: int,
        class_names: list[str]) -> None:
    """Train `model` (compiled, built in `strategy`'s scope) as `model.fit(train_ds, validation_data=val_ds,
    epochs, initial_epoch=first_epoch, steps_per_epoch, callbacks)` would on one device."""
    try:
        _loop(model, loss, strategy, train_ds, val_ds, fit_callbacks, epochs, first_epoch, steps_per_epoch, class_names)
    except tf.errors.UnavailableError as err:  # a peer died: the collectives of every other worker fail, mid-step
        raise WorkerLost.of(err, "during training") from None
    # Every worker says what it trained, so a cluster's logs show the replicas agree (or that they do not).
    log.info("multi_worker: final weights sha256 %s (%s %d of %d)", weights_digest(model), strategy.cluster_resolver.task_type,
             strategy.cluster_resolver.task_id, distribute.cluster_size(distribute.cluster()))


class WorkerLost(distribute.DistributeError):
    """A peer of the cluster stopped (killed, its node lost): an interruption, not an error of the config,
    so the run ends KILLED (seglab.engine.owner) and re-running every worker continues it (trainer.resume=auto)."""

    ends_killed = True

    @classmethod
    def of(cls, err: tf.errors.UnavailableError, when: str) -> "WorkerLost":
        lines = [line.strip() for line in err.message.splitlines() if line.strip()] or [type(err).__name__]
        said = next((line for line in lines if "unhealthy" in line or "aborted by" in line), lines[0])
        return cls(f"a worker of the cluster stopped {when} ({said}): this run ends KILLED; see that worker's log, "
                   "then start every worker again to continue it")


def from_chief(strategy, model: keras.Model, checkpointer, first_epoch: int) -> int:
    """Every worker takes the chief's training state: the model's and the optimizer's variables, the epochs
    completed and the checkpointer's best so far (which early stopping counts from), so that a run the chief
    resumed continues on all replicas from the same step.  One all-reduce of the state's bytes, the chief's
    on its first replica and zeros on every other (a sum that is the chief's state, bit for bit); the
    chief's epoch for a new run is 0 and nothing changes.  Called by every worker, in the same place."""
    variables = [*model.variables, *model.optimizer.variables]
    best_epoch = -1 if checkpointer.best_epoch is None else checkpointer.best_epoch
    arrays = [np.array([first_epoch, best_epoch], np.int64), np.array([checkpointer.best], np.float64),
              *(np.asarray(keras.ops.convert_to_numpy(v.value)) for v in variables)]
    words = _as_words(arrays) if distribute.is_chief() else np.zeros(_words_for(arrays), np.int32)

    def contribution(context):
        return tf.constant(words) if context.replica_id_in_sync_group == 0 else tf.zeros_like(words)

    try:
        summed = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.experimental_distribute_values_from_function(contribution),
                                 axis=None)
    except tf.errors.UnavailableError as err:  # the chief stopped before training (e.g. it refused the resume)
        raise WorkerLost.of(err, "before training") from None
    restored = _from_words(summed.numpy(), arrays)
    (epoch, best_epoch), (best,), values = restored[0], restored[1], restored[2:]
    if not distribute.is_chief():
        for variable, value in zip(variables, values):
            variable.assign(value)
        checkpointer.best, checkpointer.best_epoch = float(best), None if best_epoch < 0 else int(best_epoch)
    return int(epoch)


def _words_for(arrays: list[np.ndarray]) -> int:
    return -(-sum(a.nbytes for a in arrays) // 4)


def _as_words(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays' bytes, in order, as int32 words (zero-padded): any dtype travels exactly through a sum."""
    data = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return np.frombuffer(data + bytes(-len(data) % 4), np.int32)


def _from_words(words: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    data, arrays, at = words.tobytes(), [], 0
    for a in like:
        arrays.append(np.frombuffer(data, a.dtype, a.size, at).reshape(a.shape))
        at += a.nbytes
    return arrays


def _loop(model, loss, strategy, train_ds, val_ds, fit_callbacks, epochs, first_epoch, steps_per_epoch, class_names):
    """`fit`'s epochs: the training steps, the validation pass, the callbacks' hooks in fit's order."""
    train_step, test_step = _steps(model, loss, strategy, len(class_names))
    train_batches = iter(strategy.experimental_distribute_dataset(_sharded_by_data(train_ds)))
    val_batches = strategy.experimental_distribute_dataset(_sharded_by_data(val_ds))
    scores = Scores(class_names)
    callbacks = keras.callbacks.CallbackList(fit_callbacks, model=model, epochs=epochs, steps=steps_per_epoch, verbose=0)
    model.stop_training, logs = False, {}
    callbacks.on_train_begin()
    for epoch in range(first_epoch, epochs):
        callbacks.on_epoch_begin(epoch)
        train = Totals(len(class_names))
        for step in range(steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            train.add(*train_step(train_batches))
            callbacks.on_train_batch_end(step, {"loss": train.loss})  # as fit: the epoch's running mean
        callbacks.on_test_begin()
        val = Totals(len(class_names))
        for batch in val_batches:
            val.add(*test_step(batch))
        val_logs = scores.logs(val)
        callbacks.on_test_end(val_logs)
        logs = {**scores.logs(train), **{f"val_{k}": v for k, v in val_logs.items()}}
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)


def weights_digest(model: keras.Model) -> str:
    """sha256 of the model's variables' bytes, in order (the `model/<i>` arrays of a checkpoint's state file)."""
    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value)).tobytes())
    return digest.hexdigest()


def _steps(model: keras.Model, loss, strategy, num_classes: int):
    """The training and the validation step: tf.functions of a distributed batch, each giving the
    global batch's (loss, confusion matrix, images), reduced over all replicas of all workers."""

    def totals(value, logits, masks, images):
        labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return value, metrics.confusion_matrix(masks, labels, num_classes), tf.shape(images)[0]

    def train_replica(images, masks):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            value = loss(masks, logits)  # already divided by the number of replicas (seglab.losses)
            if model.losses:  # as Keras' compute_loss: the layers' regularisation losses, split as the loss is
                value += tf.add_n(model.losses) / strategy.num_replicas_in_sync
        # scale_loss: mixed_float16's loss scaling (a no-op for other optimizers); apply_gradients unscales.
        gradients = tape.gradient(model.optimizer.scale_loss(value), model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return totals(value, logits, masks, images)

    def test_replica(images, masks):
        logits = model(images, training=False)
        return totals(loss(masks, logits), logits, masks, images)

    def reduced(per_replica):
        return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in per_replica)

    @tf.function
    def train_step(batches):
        return reduced(strategy.run(train_replica, args=next(batches)))

    @tf.function
    def test_step(batch):
        return reduced(strategy.run(test_replica, args=batch))

    return train_step, test_step


def _sharded_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Every worker reads the same pipeline and keeps its slice of each global batch (the batches
    depend only on (seed, epoch, index), not on files a worker could own)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class Totals:
    """An epoch's sums over its global batches: loss times images, images, confusion matrix."""

    def __init__(self, num_classes: int):
        self.loss_sum, self.images = 0.0, 0
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def add(self, loss, matrix, images) -> None:
        count = int(images)
        self.loss_sum += float(loss) * count
        self.images += count
        self.matrix += matrix.numpy()

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.images, 1)


class Scores:
    """The values `seglab.metrics.segmentation_metrics` reports, by its names, for an epoch's totals:
    its own metric objects read the summed matrix, so the definitions are the ones `fit` logs."""

    def __init__(self, class_names: list[str]):
        self.metrics = metrics.segmentation_metrics(len(class_names), class_names)

    def logs(self, totals: Totals) -> dict[str, float]:
        self.metrics[0].matrix.assign(totals.matrix)
        return {"loss": totals.loss, **{m.name: float(m.result()) for m in self.metrics}}

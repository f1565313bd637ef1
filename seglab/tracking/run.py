"""What one run logs: `Run` opens an MLflow run and logs through the verbs of
`tracking.protocol.RunProtocol` (`log_params`, `log_epoch`, `log_masks`, `log_figure`,
`log_artifact`, `log_model`, ...) and ends it with the status it is told.  Which status, on every
exit, and everything else about a run's life (the claim, a resume, Ctrl-C and SIGTERM, what a server
that went away means for the end) is its owner's: seglab.engine.owner.  No module-level state: each
job of a sweep opens its own `Run`.

A tracking server that goes away during a run does not stop the logging code: the first logging call
that fails is reported as a warning naming what was being logged, and later logging is skipped
(`failed`, `skipped`: the owner reports them at the end).  While a run is open, MLflow's HTTP retries
and timeout are capped (`HTTP_LIMITS`) so that a dead server costs seconds, not MLflow's default
minutes.  Every write is one `signals.one_write()`: Ctrl-C and SIGTERM come when it ends.
"""

# Lazy imports: Keras, TensorFlow and MLflow's model flavours load when a model is logged, not for every run.

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Self

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.tracking import fluent

from seglab.tracking import experiments, resumable
from seglab.tracking import tags as keys
from seglab.tracking.params import as_text
from seglab.tracking.store import (ERROR_TAG_CHARS, HTTP_LIMITS, STORE_ERRORS, QuietStoreWriteErrors, StoreWriteFailed,
                                   WriteFailed, check_reachable, first_line, store_unavailable, store_write_refused,
                                   write_refused)
from seglab.util import signals, visualize

log = logging.getLogger(__name__)


MASKS_FILE = "masks/epoch_{:03d}.png"  # numbered from 1, as the console counts epochs (MLflow step + 1)


def masks_file(step: int) -> str:
    """The artifact path of the mask picture of the epoch at MLflow step `step` (0-based)."""
    return MASKS_FILE.format(step + 1)


class Run:
    """One MLflow run, the logging verbs of `tracking.protocol.RunProtocol`.  `open` starts it (or, with
    `resume_run_id`, reopens that run: same id, RUNNING again), `end` sets its status.  Used as a context
    manager it ends FINISHED, or FAILED with the error; what a command's run also needs (the claim, a
    resume's bookkeeping, signals, KILLED, the end when the server is gone) is its owner's,
    seglab.engine.owner.

    Two rules of logging itself: a reopened run keeps the params it has (MLflow refuses to change one;
    a changed value goes to the `seglab.resume.changed` tag), and a metric or image is never logged at a
    step in `logged_steps` (the steps the store already has, which the owner reads when it reopens a run).
    A store that stops answering is reported once, naming what was being logged (`failed`); later
    logging is skipped (`skipped`) and the training goes on."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None,
                 resume_run_id: str | None = None):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.resume_run_id = resume_run_id
        self.logged_steps: dict[str, int] = {}  # metric (or `image:<key>`) -> last step the run already has
        self.epochs_done = 0  # the epochs whose metrics the run has (a continued run's earlier ones too)
        self.checkpoint_dir: str | None = None  # the upload the `seglab.checkpoint` tag names
        self.tags = dict(tags)
        if parent_run_id:
            self.tags[keys.PARENT_RUN] = parent_run_id
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.failed: str | None = None  # what was being logged when the store stopped answering
        self.skipped: list[str] = []  # what was not logged after that
        self.store_lost: StoreWriteFailed | None = None  # the SQLite store's file refused a write: nothing more is tried
        self._previous_env: dict[str, str | None] = {}
        self._quiet = QuietStoreWriteErrors(uri)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.end(RunStatus.to_string(RunStatus.FINISHED if exc_type is None else RunStatus.FAILED),
                 None if exc_type is None else f"{exc_type.__name__}: {exc}")
        return False

    def open(self) -> None:
        """Start the run (reopen `resume_run_id`), its heartbeat set, with MLflow's HTTP retries capped
        (`HTTP_LIMITS`) until `end`; a run that fails to start is ended FAILED."""
        check_reachable(self.uri)
        QuietStoreWriteErrors.LOGGER.addFilter(self._quiet)
        self._previous_env = {name: os.environ.get(name) for name in HTTP_LIMITS}
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        try:
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(experiment_id=experiments.experiment_id(MlflowClient(self.uri), self.experiment))
            run = mlflow.start_run(run_id=self.resume_run_id, run_name=self.run_name,
                                   tags={**self.tags, keys.HEARTBEAT: str(int(time.time()))})
        except BaseException:
            if mlflow.active_run() is not None:
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            self._restore_env()
            raise
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id

    def end(self, status: str, error: str | None = None) -> bool:
        """Set the run's status (with `error` as its `error` tag), once and best-effort: after the store
        stopped answering it may be back; the run is no longer the active one either way.  Whether the
        store took the status.  A SQLite store whose file refuses the write is `store_lost` (its owner says
        so in its last line), anything else a warning."""
        try:
            if error is not None and self.failed is None:
                try:
                    mlflow.set_tag(keys.ERROR, error[:ERROR_TAG_CHARS])
                except Exception as tag_err:  # the run must still be ended below
                    if not self._lost(tag_err, f"recording the error of run {self.run_id}"):
                        log.warning("could not record the error on MLflow run %s: %s", self.run_id, tag_err)
            try:
                mlflow.end_run(status)  # pops the active run even when the server does not answer
            except STORE_ERRORS as err:
                if not self._lost(err, f"ending run {self.run_id} as {status}"):
                    log.warning("could not set MLflow run %s to %s (%s); the server shows it RUNNING.", self.run_id,
                                status, first_line(err))
                return False
            return True
        finally:
            self._restore_env()

    def _lost(self, err: BaseException, doing: str) -> bool:
        """Whether `err` is the SQLite store's file refusing a write; the first such is kept as `store_lost`."""
        lost = store_write_refused(self.uri, err, doing)
        if lost is not None and self.store_lost is None:
            self.store_lost = lost
        return lost is not None

    def let_go(self) -> None:
        """Stop being the active run without writing anything to it (another process writes to it now)."""
        while mlflow.active_run() is not None and mlflow.active_run().info.run_id == self.run_id:
            # MLflow's end_run always writes a status; its stack of active runs is the only way to leave without one.
            fluent._active_run_stack.get().pop()
            fluent.MLFLOW_RUN_ID.unset()
        self._restore_env()

    def _restore_env(self) -> None:
        QuietStoreWriteErrors.LOGGER.removeFilter(self._quiet)
        for name, value in self._previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._previous_env = {}

    def _log(self, what: str, call, *args, **kwargs):
        """Call MLflow; on the first store error warn, naming `what`, and skip all later logging.  A file that
        cannot be written (the SQLite store's own, or one the run logs) is not an outage: it raises."""
        if self.failed is not None or self.store_lost is not None:
            self.skipped.append(what)
            return None
        try:
            with signals.one_write():
                return call(*args, **kwargs)
        except STORE_ERRORS as err:
            if self._lost(err, f"logging {what} to run {self.run_id}"):  # the owner ends the run FAILED if it can
                raise self.store_lost from err
            refused = write_refused(err)
            if refused is not None:  # a full disk, not an outage: the run ends FAILED, the command exits non-zero
                where = refused.filename or f"into {mlflow.get_artifact_uri()}"  # a copy (sendfile) names no file
                raise WriteFailed(f"could not write {where} while logging {what} to run {self.run_id}: "
                                  f"{refused.strerror}; free space (or make it writable), then run the command again") from err
            if not store_unavailable(err):
                raise  # the request itself was wrong (e.g. an invalid value): a bug to see, not an outage
            self.failed = what
            log.warning(
                "MLflow logging failed while logging %s to tracking.uri=%s (run %s): %s. Training goes on without "
                "the tracking server; nothing more is logged to it, checkpoints stay in the job's output directory.",
                what, self.uri, self.run_id, first_line(err),
            )
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The params; a reopened run keeps the value of a param it has (MLflow refuses to change it), a
        changed one is recorded in the `seglab.resume.changed` tag."""
        params = as_text(params)
        if self.resume_run_id:
            before = resumable.get_run(self.uri, self.run_id).params
            changed = {k: f"{before[k]} -> {v}" for k, v in params.items() if k in before and before[k] != v}
            params = {k: v for k, v in params.items() if k not in before}
            if changed:
                log.info("resumed run %s with changed params: %s", self.run_id, changed)
                self.set_tags({keys.RESUME_CHANGED: "; ".join(f"{k}: {v}" for k, v in changed.items())[:ERROR_TAG_CHARS]})
        self._log("params", mlflow.log_params, params)

    def _new_at(self, key: str, step: int) -> bool:
        return step > self.logged_steps.get(key, -1)

    def log_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        self.epochs_done = max(self.epochs_done, epoch + 1)
        new = {k: float(v) for k, v in metrics.items() if self._new_at(k, epoch)}
        if new:
            self._log(f"metrics of epoch {epoch + 1}", mlflow.log_metrics, new, step=epoch)  # epochs counted as on the console

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._log("metrics", mlflow.log_metrics, {k: float(v) for k, v in metrics.items()})

    def log_masks(self, image, epoch: int, key: str = "val_masks") -> None:
        """An image per epoch under one key (the UI's step slider shows the masks improving), and the
        same image as the artifact file `masks_file(epoch)`: the image card sits below the run's
        params, the artifact view shows a file at the top of the page."""
        if not self._new_at(f"image:{key}", epoch):
            return
        # synchronous: an upload that fails must raise here, to be reported, not die in a background thread
        what = f"{key} image of epoch {epoch + 1}"
        self._log(what, mlflow.log_image, image, key=key, step=epoch, synchronous=True)
        self._log(what, mlflow.log_image, image, artifact_file=masks_file(epoch))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._log(f"artifact {path}", mlflow.log_artifact, path, artifact_path)

    def log_artifacts(self, directory: str, artifact_path: str | None = None) -> None:
        self._log(f"artifacts {directory}", mlflow.log_artifacts, directory, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._log(artifact_file, mlflow.log_text, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._log(artifact_file, mlflow.log_dict, dict(data), artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib Figure as an image artifact (e.g. `confusion_matrix.png`)."""
        self._log(artifact_file, mlflow.log_figure, figure, artifact_file)

    def log_confusion_matrix(self, cm, class_names: list[str], title: str, stem: str = "confusion_matrix") -> None:
        """`<stem>.png` (rows normalised, with counts) and `<stem>.json`, the same for a training run and an
        evaluation run (a training's test split, trainer.score_test: `confusion_matrix_test`)."""

        self.log_figure(visualize.confusion_matrix_figure(cm, class_names, title), f"{stem}.png")
        self.log_dict({"class_names": list(class_names), "rows": "true", "columns": "predicted", "counts": cm.tolist()},
                      f"{stem}.json")

    def log_model(self, model, input_example, step: int = 0) -> str | None:
        """The Keras model in MLflow's Keras 3 flavour (`keras`: a `.keras` file), loadable with
        mlflow.keras.load_model and mlflow.pyfunc; its URI, or None when the store did not take it.  `step`: the
        epoch whose weights it holds; MLflow links the run's metrics of that step to the logged model (its page
        shows them).  Runs logged before used mlflow.tensorflow (`tracking.models.load_model` reads both)."""
        import keras
        import tensorflow as tf

        # A signature, not the example: mlflow.keras.log_model given an input_example fails writing it (it writes
        # before it makes the model's directory: mlflow/mlflow#16183, still so in MLflow 3.17).
        signature = mlflow.models.infer_signature(input_example, model.predict(input_example, verbose=0))
        info = self._log(
            "the model", mlflow.keras.log_model, model, name="model", signature=signature,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"], step=step,
        )
        return info.model_uri if info is not None else None

    def heartbeat(self) -> None:
        """A sign of life, so that another command does not take this run for one whose process died."""
        self.set_tags({keys.HEARTBEAT: int(time.time())})

    def log_checkpoint(self, files: list[Path], epoch: int, directory: str | None = None) -> None:
        """Upload `files` (the training state and the best model after `epoch` epochs) to `directory`
        (default `resume/epoch-NNNN`), then point the `seglab.checkpoint` tags at it, then delete the
        previous upload: a kill during the upload leaves the tags on the previous complete one."""
        directory = directory or f"resume/epoch-{epoch:04d}"
        for path in files:
            self._log(f"checkpoint {path.name} of epoch {epoch}", mlflow.log_artifact, str(path), directory)
            if self.failed:
                return
        self.set_tags({keys.CHECKPOINT: directory, keys.CHECKPOINT_EPOCH: epoch})
        if self.failed:
            return
        previous, self.checkpoint_dir = self.checkpoint_dir, directory
        if previous and previous != directory and previous.startswith("resume/"):
            try:
                from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

                get_artifact_repository(mlflow.get_artifact_uri()).delete_artifacts(previous)
            except Exception as err:  # noqa: BLE001  a leftover upload wastes space, it loses nothing
                log.warning("could not delete the superseded checkpoint %s of run %s: %s", previous, self.run_id, first_line(err))

    def log_served_model(self, model, name: str = "served", step: int = 0, resize: str = "stretch") -> str | None:
        """The Keras model wrapped as the image-taking pyfunc model (seglab.tracking.served, what
        `mlflow models serve` runs); its URI, or None when the store did not take it.  `step`: as `log_model`'s;
        `resize`: the training's data.resize, which predict, evaluate and serving then apply."""
        from seglab.tracking.served import log_served_model

        info = self._log("the served model", log_served_model, model, name, step, resize)
        return info.model_uri if info is not None else None

    def register_model(self, model_uri: str, name: str, tags: Mapping[str, Any]) -> str | None:
        """A new version of the registered model `name` (tagged with `tags`); its version number."""
        from seglab.tracking.registry import register

        return self._log(f"model version of {name}", register, model_uri, name, tags)

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        """Columns of equal length as a table the MLflow UI can sort and filter (`*.json`)."""
        self._log(artifact_file, mlflow.log_table, data=dict(columns), artifact_file=artifact_file)

    def log_image(self, image, artifact_file: str) -> None:
        """One image (uint8 RGB array) as an artifact file, e.g. `worst_val.png`."""
        self._log(artifact_file, mlflow.log_image, image, artifact_file=artifact_file)

    def log_dataset(self, record) -> None:
        """A data split as the run's input (`seglab.data.lineage.DatasetRecord`), with its context."""
        from seglab.tracking.datasets import as_mlflow_dataset

        self._log(f"dataset {record.name}", _log_input, as_mlflow_dataset(record), record.context)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._log(f"tags {', '.join(tags)}", mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def delete_tag(self, key: str) -> None:
        self._log(f"tag {key}", mlflow.delete_tag, key)


# A store's words for "another writer inserted this row first" (SQLite, PostgreSQL, MySQL).
_INSERT_RACE = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def _log_input(dataset, context: str) -> None:
    """mlflow.log_input; jobs of a parallel sweep log the same data set to one experiment at the same
    moment, and the store keeps one row per data set: the loser of that race tries once more, and
    then finds the row the winner wrote."""
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as err:
        if not any(words in str(err) for words in _INSERT_RACE):
            raise
        mlflow.log_input(dataset, context=context)

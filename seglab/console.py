"""What a person reads on the console: library notices off unless asked for (`verbose=true` or
Hydra's `hydra.verbose`), one short line per epoch (`callbacks.EpochLine`), and a last line that
says where the run is in the MLflow UI.  Nothing here imports TensorFlow: `quiet` must run first.
"""

# Lazy imports: Keras only where its progress bars are silenced, optuna only in an optuna sweep; the console is set up
# before TensorFlow loads.

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from seglab.errors import UserError

# Read by TensorFlow's C++ runtime when it loads: 3 drops its INFO, WARNING and ERROR lines (CUDA
# probes on a machine without a GPU, oneDNN and CPU-instruction notices, "Local rendezvous is
# aborting", graph-attribute mismatches); fatal errors still print and Python exceptions still raise.
# MLflow sets its own loggers' level from MLFLOW_LOGGING_LEVEL when it is imported (INFO by default:
# "Creating initial MLflow database tables", "Experiment ... does not exist. Creating a new experiment").
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_LOGGING_LEVEL": "WARNING",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # "Downloading artifacts" bars when a model is logged
# Python loggers whose INFO lines narrate library internals ("Creating initial MLflow database
# tables", alembic migrations, font caches); their warnings still show.
NOISY_LOGGERS = ("mlflow", "alembic", "matplotlib", "PIL", "h5py", "urllib3", "git",
                 "tf2onnx")  # "[INFO] Using opset <onnx, 15>", "Optimizing ONNX model" of an ONNX export
# TensorFlow's and absl's Python warnings are about TensorFlow internals (retracing, saving).
INTERNAL_LOGGERS = ("tensorflow", "absl")


def is_verbose(cfg) -> bool:
    """`verbose=true`, or Hydra's own switch (`hydra.verbose=true` or a list of loggers)."""

    return bool(cfg.get("verbose")) or (HydraConfig.initialized() and bool(HydraConfig.get().verbose))


def quiet(verbose: bool) -> None:
    """Silence library notices for this process (call before TensorFlow is imported).  Every command calls it
    before Keras loads, so it also refuses another Keras backend (`refuse_other_backend`), whatever `verbose` says."""
    refuse_other_backend()
    if verbose:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)  # a value the user set wins
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in INTERNAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def native_quiet_wanted() -> bool:
    """Whether C++ libraries' own stderr lines (INFO and WARNING lines, mostly) are to be hidden: when
    TF_CPP_MIN_LOG_LEVEL hides TensorFlow's warnings too, at 2 or 3 (`quiet` sets 3; `verbose=true` leaves it unset)."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    return level.isdigit() and int(level) >= 2


@contextlib.contextmanager
def native_quiet():
    """Inside, what C++ libraries write straight to the stderr file descriptor is held back: absl's lines, which
    TF_CPP_MIN_LOG_LEVEL does not reach ("WARNING: All log messages before absl::InitializeLog() is called",
    "W0000 ... Ignored output_format" of the LiteRT converter, "I0000 ... Starting new session" of grappler),
    and LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU".  Python's own stderr goes the same
    way, so an error inside is followed by everything held back (nothing is lost when it matters)."""
    if not native_quiet_wanted():
        yield
        return
    sys.stderr.flush()
    saved, failed = os.dup(2), True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def plain_optuna(verbose: bool, sweeper: str | None) -> None:
    """In a sweep by hydra-optuna-sweeper (`sweeper`: Hydra's `hydra/sweeper` choice), optuna's lines through the
    job's logging, not optuna's own handler, which writes raw colour codes ("\\033[32m[I ...]") into files and
    pipes as well: off unless `verbose`, then plain."""
    if sweeper != "optuna":
        return
    import optuna  # the optuna sweeper's own import, made now so that its logging is set before the study starts

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)


KERAS_BACKEND = "tensorflow"  # what seglab's models, losses, data pipeline and distribution are written for


def refuse_other_backend() -> None:
    """A UserError when Keras would load a backend other than TensorFlow: KERAS_BACKEND, else keras.json's "backend"
    where Keras reads it (KERAS_HOME, else ~/.keras).  Keras would import that one instead, and seglab fail far in."""
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen:
        if chosen != KERAS_BACKEND:
            raise UserError(f"KERAS_BACKEND={chosen} is set in the environment, but seglab trains and predicts on "
                            f"TensorFlow: unset KERAS_BACKEND (or set it to {KERAS_BACKEND}) for seglab's commands")
        return
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    settings = Path(home).expanduser() / "keras.json"
    try:
        chosen = json.loads(settings.read_text()).get("backend", KERAS_BACKEND)
    except (OSError, ValueError, AttributeError):
        return  # none, or one Keras cannot read either (it then keeps its default, TensorFlow)
    if chosen != KERAS_BACKEND:
        raise UserError(f'{settings} sets "backend": "{chosen}", but seglab trains and predicts on TensorFlow: set it '
                        f'to "{KERAS_BACKEND}" there, or run seglab with KERAS_BACKEND={KERAS_BACKEND}')


@contextlib.contextmanager
def keras_silent():
    """No Keras progress bars inside (MLflow predicts on the input example to infer a model's signature)."""
    from keras.config import disable_interactive_logging, enable_interactive_logging, is_interactive_logging_enabled

    was_enabled = is_interactive_logging_enabled()
    disable_interactive_logging()  # Keras' output then goes to absl's logger, silenced by `quiet`
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if was_enabled:
            enable_interactive_logging()


# MLflow 3's UI opens in its GenAI view (traces, "agent versions") unless the address or the browser's last choice
# says otherwise; this query selects its model-training view (runs, metrics, models), whatever the browser chose.
TRAINING_VIEW = "?workflowType=machine_learning"


def run_address(uri: str, experiment_id: str, run_id: str) -> list[str]:
    """Console lines saying where a run is in the MLflow UI (its model-training view): its address on a tracking
    server, else how to open it and then the address, on a line of its own (a long store path keeps each line short)."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"
    if uri.startswith(("http://", "https://")):
        return [f"MLflow run {run_id}: {uri.rstrip('/')}/{page}"]
    return [f"MLflow run {run_id}: `mlflow ui --backend-store-uri {uri}`, then", f"  http://127.0.0.1:5000/{page}"]


# Launchers whose jobs run at the same time and print to the same console.
PARALLEL_LAUNCHERS = ("joblib",)


def parallel_job() -> int | None:
    """The number of this sweep's job when its launcher runs jobs side by side (joblib), else None."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.runtime.choices.get("hydra/launcher") not in PARALLEL_LAUNCHERS or hydra.job.get("num") is None:
        return None
    return hydra.job.num


class ConsoleFormatter(logging.Formatter):
    """The console's lines (conf/hydra/job_logging/seglab.yaml): messages as they are, warnings and
    errors marked, and `[job N]` first when parallel jobs share the console (joblib: their epoch lines
    interleave); the job's log file keeps the full format with times and logger names, and the tracebacks
    of logged errors (a sweep's failed job is one line here, seglab.engine.sweep.run_job)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:  # a copy: the file's handler formats the original
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        text = super().format(record)
        text = text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"
        job = parallel_job()
        return text if job is None else f"[job {job}] {text}"

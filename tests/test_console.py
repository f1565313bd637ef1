"""The console of a default run: one short line per epoch and a last line naming the run, nothing else."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from seglab import console
from seglab.cli.train import STARTING
from tests.conftest import TINY, inherited_env, noisy_lines

EXPECTED = (
    re.compile(re.escape(STARTING)),  # first, so the seconds before epoch 1 are not silent
    re.compile(r"epoch +\d+/\d+  loss \d\.\d{4}  val mIoU \d\.\d{4}  val Dice \d\.\d{4}  \d+\.\d s  best val_mean_iou \d\.\d{4} \(epoch \d+\)"),
    re.compile(r"best val_mean_iou \d\.\d{4} at epoch \d+; checkpoints in \S+"),
    re.compile(r"MLflow run (\w+): `mlflow ui --backend-store-uri \S+`, then"),
    re.compile(r"  http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs/(\w+)\?workflowType=machine_learning"),
)
LINE_CHARS = 200  # the console's longest line (a terminal's width, twice over)


def _quiet_env() -> dict[str, str]:
    """The user's environment: no TF_CPP_MIN_LOG_LEVEL of the test helpers, no MLflow logging level."""
    return {name: value for name, value in inherited_env().items() if name not in console.QUIET_ENV}


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("quiet")
    return tmp_path, subprocess_run_quiet(tmp_path, "seglab", *TINY)


@pytest.mark.slow
def test_default_run_prints_only_epoch_lines_and_the_run_address(quiet_run):
    tmp_path, done = quiet_run
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    unexpected = [line for line in lines if not any(p.fullmatch(line) for p in EXPECTED)]
    assert not unexpected, "\n".join(unexpected)
    assert lines[0] == STARTING
    epochs = [line for line in lines if EXPECTED[1].fullmatch(line)]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert max(map(len, lines)) <= LINE_CHARS, max(lines, key=len)
    named, address = EXPECTED[3].fullmatch(lines[-2]), EXPECTED[4].fullmatch(lines[-1])
    assert EXPECTED[2].fullmatch(lines[-3]) and named and address and named.group(1) == address.group(2)
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(named.group(1))
    assert run.info.experiment_id == address.group(1)
    assert "val_iou_boundary" in run.data.metrics  # per-class values: in MLflow, not on the console
    assert "iou_boundary" not in done.stdout


@pytest.mark.slow
def test_evaluate_and_predict_print_only_their_results(quiet_run):
    tmp_path, done = quiet_run
    run_id = EXPECTED[3].search(done.stdout + done.stderr).group(1)
    data = [arg for arg in TINY if arg.startswith("data.")]
    evaluated = subprocess_run_quiet(tmp_path, "seglab.evaluate", f"model_uri=runs:/{run_id}/model", *data)
    lines = (evaluated.stdout + evaluated.stderr).strip().splitlines()
    assert lines[0].startswith(f"runs:/{run_id}/model on data=shapes, test split")
    assert all(re.fullmatch(r"  test_\w+ +\d\.\d{4}", line) for line in lines[1:]), "\n".join(lines)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "cat.png")
    predicted = subprocess_run_quiet(tmp_path, "seglab.predict", f"model_uri=runs:/{run_id}/model", f"input={tmp_path / 'cat.png'}",
                                     f"output={tmp_path / 'masks'}")
    assert (predicted.stdout + predicted.stderr).strip() == f"wrote 1 masks and overlays to {tmp_path / 'masks'}"


@pytest.mark.slow
def test_verbose_brings_the_library_notices_back(tmp_path):
    done = subprocess_run_quiet(tmp_path, "seglab", *TINY, "trainer.epochs=1", "tracking.log_model=false", "verbose=true")
    assert "mlflow" in done.stderr.lower() and "tensorflow" in done.stderr.lower()


@pytest.mark.slow
def test_slide_mode_and_the_exports_print_only_their_results(quiet_run):
    # Slide mode and export called a model loaded from MLflow with NumPy arrays (Keras' input-structure UserWarning);
    # the exporters' converters and runtimes write C++ lines (absl, LiteRT's XNNPACK notice) past TF_CPP_MIN_LOG_LEVEL;
    # TensorFlow's own LiteRT interpreter is deprecated (seglab uses ai-edge-litert where it installs).
    tmp_path, done = quiet_run
    model = f"model_uri=runs:/{EXPECTED[3].search(done.stdout + done.stderr).group(1)}/model"
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(tmp_path / "large.png")
    commands = {
        "seglab.predict": (model, f"input={tmp_path / 'large.png'}", f"output={tmp_path / 'slid'}", "inference.mode=slide"),
        "seglab.evaluate": (model, "data.image_size=64", "data.source.test_size=4", "inference.mode=slide"),
        "seglab.export litert": (model, "format=litert", f"output={tmp_path / 'litert'}"),
        "seglab.export onnx": (model, "format=onnx", f"output={tmp_path / 'onnx'}"),
    }
    for command, args in commands.items():
        answered = subprocess_run_quiet(tmp_path, command.split()[0], *args)
        assert not noisy_lines(answered), f"{command}:\n" + "\n".join(noisy_lines(answered))
        assert re.search(r"^(wrote|runs:/)", answered.stdout, re.M), answered.stdout  # its result
    verbose = subprocess_run_quiet(tmp_path, "seglab.export", model, "format=litert", f"output={tmp_path / 'again'}", "verbose=true")
    assert "XNNPACK" in verbose.stderr  # verbose=true: the runtime's own lines are back


@pytest.mark.slow
def test_an_optuna_search_prints_no_colour_codes(tmp_path):
    done = subprocess_run_quiet(tmp_path, "seglab", "+hparams_search=unet_shapes", "hydra.sweeper.n_trials=1", *TINY,
                                "data.source.train_size=16", "data.source.val_size=8", "trainer.epochs=1", "tracking.log_model=false")
    assert not noisy_lines(done), "\n".join(noisy_lines(done))
    assert "A new study created" not in done.stdout + done.stderr  # optuna's INFO lines: verbose=true only


def test_verbose_gives_optunas_lines_plain_through_logging(caplog, capfd):
    import logging

    import optuna

    try:
        console.plain_optuna(True, "optuna")
        with caplog.at_level(logging.INFO):
            optuna.logging.get_logger("optuna.study").info("A new study created in memory with name: x")
        assert [r.getMessage() for r in caplog.records] == ["A new study created in memory with name: x"]
        assert "\x1b[" not in capfd.readouterr().err  # not through optuna's own coloured handler
        console.plain_optuna(False, "optuna")
        assert optuna.logging.get_verbosity() == logging.WARNING
    finally:
        optuna.logging.set_verbosity(logging.INFO)
        optuna.logging.disable_propagation()
        optuna.logging.enable_default_handler()


def test_native_lines_are_held_back_and_shown_when_the_call_fails(monkeypatch, capfd):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    with console.native_quiet():
        os.write(2, b"I0000 a C++ library's notice\n")
    with pytest.raises(ValueError), console.native_quiet():
        os.write(2, b"E0000 what went wrong\n")
        raise ValueError("failed")
    assert capfd.readouterr().err == "E0000 what went wrong\n"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # as verbose=true leaves it: shown
    with console.native_quiet():
        os.write(2, b"I0000 shown\n")
    assert capfd.readouterr().err == "I0000 shown\n"


def subprocess_run_quiet(tmp_path, module, *args):
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**_quiet_env(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_run_address_of_a_server_run_and_of_a_local_store():
    # the model-training view's address (tests/test_ui.py opens it in a browser)
    page = "#/experiments/3/runs/abc?workflowType=machine_learning"
    assert console.run_address("http://host:5000/", "3", "abc") == [f"MLflow run abc: http://host:5000/{page}"]
    command, address = console.run_address("sqlite:///mlflow.db", "3", "abc")
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in command and address.endswith(page)


class _Terminal:
    """A stream that says it is a terminal, as sys.stdout does in an interactive shell."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_bar_on_a_terminal_then_one_line_per_epoch(tmp_path, caplog):
    import logging

    from seglab.engine.callbacks import Checkpointer, EpochLine

    checkpointer = Checkpointer(tmp_path, monitor="val_mean_iou")
    checkpointer.best, checkpointer.best_epoch = 0.5, 0
    terminal = _Terminal()
    line = EpochLine(3, checkpointer, stream=terminal)
    line.set_params({"steps": 4, "epochs": 3})
    with caplog.at_level(logging.INFO, logger="seglab.engine.callbacks"):
        line.on_epoch_begin(0)
        for batch in range(4):
            line.on_train_batch_end(batch, {"loss": 1.0 - batch / 10})
        line.on_epoch_end(0, {"loss": 0.7, "val_mean_iou": 0.5, "val_mean_dice": 0.6, "val_iou_object": 0.1})
    assert "\repoch 1/3  [" in terminal.text and "4/4  loss 0.7000" in terminal.text
    assert terminal.text.endswith("\r\033[K")  # the bar is cleared before the epoch's line
    (message,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"epoch 1/3  loss 0\.7000  val mIoU 0\.5000  val Dice 0\.6000  \d+\.\d s  best val_mean_iou 0\.5000 \(epoch 1\)", message)


def test_no_bar_when_not_a_terminal(tmp_path):
    import io

    from seglab.engine.callbacks import Checkpointer, EpochLine

    stream = io.StringIO()
    line = EpochLine(1, Checkpointer(tmp_path, monitor="val_mean_iou"), stream=stream)
    line.set_params({"steps": 2})
    line.on_epoch_begin(0)
    line.on_train_batch_end(0, {"loss": 1.0})
    assert stream.getvalue() == ""


def test_another_keras_backend_is_refused_from_the_variable_or_keras_json(tmp_path, monkeypatch):
    """Issue 32: KERAS_BACKEND=jax ended in a traceback once Keras loaded; keras.json's "backend" chooses it too."""
    from seglab.errors import UserError

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(UserError, match="^KERAS_BACKEND=jax is set in the environment, but seglab trains and predicts on TensorFlow"):
        console.quiet(verbose=True)
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    console.quiet(verbose=True)  # the variable wins over the file, as in Keras
    monkeypatch.delenv("KERAS_BACKEND")
    with pytest.raises(UserError, match=re.escape(f'{tmp_path / "keras.json"} sets "backend": "torch"')):
        console.quiet(verbose=True)
    (tmp_path / "keras.json").write_text('{"backend": "tensorflow", "floatx": "float32"}')
    console.quiet(verbose=True)

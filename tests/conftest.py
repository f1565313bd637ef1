"""Shared helpers: the real CLI in a subprocess, the real config composed with Hydra's API."""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.stores import fresh_store, store_of
from tests.zygote import Zygote

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")

# A tiny, fast experiment: 32 px images, a two-level U-Net, a few dozen images, two epochs.
TINY = (
    "data.image_size=32",
    "data.source.train_size=48",
    "data.source.val_size=16",
    "model.depth=2",
    "model.base_filters=4",
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.mask_samples=2",
)


# Set in this process by the tests' own MLflow calls (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI), not by the
# user: a command inherits it only when a test passes it in `env`.
LEAKED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def inherited_env() -> dict[str, str]:
    """This process's environment less what the tests' own MLflow calls set in it (LEAKED)."""
    return {name: value for name, value in os.environ.items() if name not in LEAKED}


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri(monkeypatch):
    """A config composed in this process reads MLFLOW_TRACKING_URI (seglab's default store honours it): not the one
    an earlier test's MLflow call left here."""
    for name in LEAKED:
        monkeypatch.delenv(name, raising=False)


# PYTHONUNBUFFERED: a command's output (and its jobs', which inherit it) reaches its file line by line, as tests watch it.
# PYTHONFAULTHANDLER: a command that dies of a signal (a segfault in a library) prints every thread's Python stack
# to the stderr the test shows (the clean-clone CI once saw the SIGTERM test's command end -11 with nothing printed).
CLI_ENV = {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
_ZYGOTE = Zygote()  # started by the first command, with its environment
atexit.register(_ZYGOTE.close)


def _command_env(env: dict | None) -> tuple[dict, dict, bool]:
    """The tests' usual environment for a command, the command's own (with `env`), and whether it is forked."""
    default = {**inherited_env(), **CLI_ENV}
    full_env = {**default, **(env or {})}
    return default, full_env, _ZYGOTE.serves(full_env, default) and not os.environ.get("SEGLAB_TESTS_UNFORKED")


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from `cwd` in a new process, as subprocess.run(capture_output=True, text=True) answers it:
    forked from tests/zygote.py's (TensorFlow imported once per test worker) unless `env` changes what is read at
    import, or SEGLAB_TESTS_UNFORKED is set (then a new interpreter each time, to compare)."""
    default, full_env, forked = _command_env(env)
    if forked:
        return _ZYGOTE.run(module, list(args), cwd, full_env, timeout, default)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def start_module(module: str, *args: str, cwd: Path, env: dict | None = None):
    """`python -m MODULE ARGS` from `cwd`, started and not waited for, in a session of its own (os.killpg(proc.pid, ...)
    reaches what it starts), its stdout and stderr as one stream of lines in `proc.stdout`: forked from the zygote
    as run_module decides, else a subprocess.Popen."""
    default, full_env, forked = _command_env(env)
    if forked:
        return _ZYGOTE.start(module, list(args), cwd, full_env, default)
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_cli(*args: str, cwd: Path, timeout: float = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m seglab ARGS` as a user runs it, from `cwd` (outputs and ./mlflow.db land there).
    A command expected to succeed (`check`) that would create a new SQLite store gets it migrated
    already (tests/stores.py); one expected to fail creates its own, so "no store left behind" holds."""
    store = store_of(args, cwd) if check else None
    if store is not None:
        fresh_store(store)
    done = run_module("seglab", *args, cwd=cwd, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"seglab exited {done.returncode}\nSTDOUT:\n{done.stdout[-4000:]}\nSTDERR:\n{done.stderr[-4000:]}")
    return done


# What a library prints when seglab's console does not silence it: Python warnings, absl's and TensorFlow's C++ lines
# ("W0000 ...", "I0000 ... Started server with target: grpc://"), LiteRT's "INFO: Created TensorFlow Lite XNNPACK
# delegate", MLflow's INFO lines, tf2onnx's "[INFO] Using opset", raw colour codes (optuna's), tracebacks.
NOISE = re.compile(r"Warning|warnings\.warn|^[IWEF]\d{4} |absl|^INFO: |^\[INFO\] (Using|Optimizing|Computed|After)|"
                   r" INFO mlflow|\x1b\[|Traceback|grpc://")


def noisy_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The lines of a command's output (stdout and stderr) that a quiet console should not have shown (NOISE)."""
    return [line for line in (done.stdout + (done.stderr or "")).splitlines() if NOISE.search(line)]


def signal_after(marker: str, sig: int, module: str, *args: str, cwd: Path, watch: str = "out.txt") -> tuple[int, str]:
    """Start `python -m MODULE ARGS` in a new interpreter (what its real shutdown prints is the point), send it `sig`
    once `marker` is in its stdout (or in a file `watch`, a glob under `cwd`, matches: submitit_local's jobs write their
    own logs), and wait: (its exit code, what it wrote to stderr after the signal).
    Output goes to files, not pipes nobody reads (a full pipe would block it), and the test watches the command's
    own output, not a store it writes (a reader could lock SQLite)."""
    out, err = open(cwd / "out.txt", "w"), open(cwd / "err.txt", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=cwd, env={**inherited_env(), **CLI_ENV}, stdout=out, stderr=err,
        # Ctrl-C as in a terminal: a test suite started in the background (`&`, nohup) has SIGINT ignored, and so would the command.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 300
        while (not any(marker in path.read_text(errors="replace") for path in cwd.glob(watch)) and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.5)
        assert proc.poll() is None, "the command ended before it could be stopped:\n" + (cwd / "err.txt").read_text()[-3000:]
        before = (cwd / "err.txt").read_text()
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        out.close()
        err.close()
    said = (cwd / "err.txt").read_text()
    assert said.startswith(before), said[-3000:]
    return proc.returncode, said[len(before):]


@pytest.fixture
def compose_cfg():
    """compose(overrides) -> the composed DictConfig, exactly as `python -m seglab` builds it."""
    import seglab.config.schema  # noqa: F401  registers the schemas in Hydra's ConfigStore

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


def build_model(name: str, num_classes: int, image_size: int, **overrides):
    """`model=name` from conf/ (its YAML defaults, its schema's checks) with `overrides` merged in, built
    as train.py builds it: the builders have no defaults of their own, so tests go through the config too."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import seglab.config.schema  # noqa: F401  registers the schemas in Hydra's ConfigStore

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}"]).model
    cfg = OmegaConf.merge(cfg, overrides)
    try:
        return instantiate(cfg, num_classes=num_classes, image_size=image_size)
    except InstantiationException as wrapped:  # the builder's own error, as a test of the builder expects it
        raise wrapped.__cause__ from None


# The docker-compose tracking stack as local processes (PostgreSQL, an S3 endpoint, mlflow server).
def dead_pid() -> str:
    """The pid of a process that has ended (a child's, just waited for): what a crashed writer leaves in a name or tag.
    A made-up number (999) may be a live process on a busy machine."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return done.stdout.strip()


from tests.tracking_stack import stack_run, tracking_stack  # noqa: E402,F401

# Groups of tests for the xdist workers, heaviest first (tests/schedule.py), and `--write-costs`.
from tests.schedule import (  # noqa: E402,F401
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure_node,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_xdist_make_scheduler,
)

"""`python -m seglab ARGS` (or another seglab command) in a fresh process without paying for Python's imports each time.

Each command-line test used to start a new interpreter that imported TensorFlow, Keras, MLflow and Hydra
(about 8 s of CPU on the 2-core test machine) before it did its second of work.  A zygote imports them
once per pytest worker and forks one child per command: the child is a new process, as a user's
command is (its own op-determinism switch, precision policy, Hydra state, signal handlers, exit code,
stdout and stderr), started from a parent that has run no TensorFlow op, so TensorFlow's runtime is
created in the child as in a fresh interpreter.  The child runs `seglab/__main__.py` as `python -m`
does (runpy, `sys.argv` as given) in the command's directory and environment, and exits as the
interpreter does (thread joins, atexit handlers, flushes) less the teardown of its modules.

What a fork cannot give is an environment read while the modules import (Keras reads KERAS_HOME,
TensorFlow its TF_* switches): a command whose environment differs from the zygote's in such a
variable (IMPORT_TIME) runs as a plain subprocess instead, as do the tests about start-up itself
(tests/test_console.py, tests/test_help.py, tests/test_install.py, the README's quick start), which
call subprocess directly.

Protocol, one request at a time over the zygote's stdin/stdout: a JSON line {module, argv, cwd, env,
out, err, session} in; a line {"pid": ...} once the child runs, then {"code": ...} when it has exited.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Environment variables read while TensorFlow, Keras or Python start: a command that sets one differently runs unforked.
# (TensorFlow reads TF_NUM_INTRAOP_THREADS, CUDA_VISIBLE_DEVICES and the like when its runtime starts, in the child:
# those may differ.)
IMPORT_TIME = ("KERAS_", "TF_CPP_", "TF_ENABLE_", "TF_USE_", "TENSORFLOW_", "PYTHON", "OMP_", "KMP_", "MKL_", "LD_")
PRELOAD = ("tensorflow", "keras", "keras_hub", "mlflow", "hydra", "omegaconf", "seglab.cli.train", "seglab.engine.train")
# What seglab's commands import before TensorFlow: a zygote of these forks commands whose TensorFlow, if they load it, starts
# in the child with the child's environment (tests/test_mistakes.py: TensorFlow's C++ log level is seglab's to set).
BEFORE_TENSORFLOW = tuple(f"seglab.cli.{name}" for name in ("train", "predict", "evaluate", "export", "report", "bench",
                                                               "check_determinism"))


class Zygote:
    """One forking server, started on first use."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD):
        self.preload = preload
        self.last_cpu_s: float | None = None  # the CPU seconds of the last command's child
        self.env: dict[str, str] | None = None  # the environment it was started with (None: not started yet)
        self.process: subprocess.Popen | None = None
        self.started: Started | None = None  # the last command `start` forked
        self.starts = 0
        self._pending = b""  # what was read from the zygote's pipe past the last whole line
        self.streams = Path(tempfile.mkdtemp(prefix="seglab-zygote-"))  # the children's stdout and stderr

    def serves(self, env: dict[str, str], default: dict[str, str]) -> bool:
        """Whether a command with `env` may be forked from this zygote: no import-time variable differs from the
        environment it runs with (`default`, the tests' usual one, once it starts)."""
        base = self.env if self.env is not None else default
        keys = {k for k in (*env, *base) if k.startswith(IMPORT_TIME)}
        return all(env.get(k) == base.get(k) for k in keys)

    def _fork(self, request: dict, default: dict[str, str]) -> int:
        """Send one command to the zygote, (re)started with `default` when it is not running; the child's pid."""
        if self.started is not None and self.started.returncode is None:  # one command at a time: a test left it running
            self.started.kill()
            self.started.wait()
        if self.process is None or self.process.poll() is not None:
            self.env = dict(self.env if self.env is not None else default)
            self._pending = b""
            self.process = subprocess.Popen([sys.executable, "-m", "tests.zygote", *self.preload], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, env=self.env, cwd=str(Path(__file__).parent.parent),
                                            text=True, bufsize=1)
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._answer(None)["pid"]

    def start(self, module: str, argv: list[str], cwd: Path, env: dict[str, str], default: dict[str, str]) -> "Started":
        """`python -m MODULE *argv` started and not waited for, in a session of its own, stdout and stderr in one
        stream: subprocess.Popen(stdout=PIPE, stderr=STDOUT, text=True, start_new_session=True) as the tests use it."""
        self.starts += 1
        out = self.streams / f"output{self.starts}"  # its own file, there before the child writes (the reader opens it first)
        out.touch()
        request = {"module": module, "argv": argv, "cwd": str(cwd), "env": env, "out": str(out), "err": str(out), "session": True}
        self.started = Started(self, self._fork(request, default), out)
        return self.started

    def run(self, module: str, argv: list[str], cwd: Path, env: dict[str, str], timeout: float,
            default: dict[str, str]) -> subprocess.CompletedProcess:
        """`python -m MODULE *argv` from `cwd` with `env`, as subprocess.run(capture_output=True, text=True) would
        answer it; the zygote (re)starts with `default` when it is not running."""
        out, err = self.streams / "stdout", self.streams / "stderr"
        request = {"module": module, "argv": argv, "cwd": str(cwd), "env": env, "out": str(out), "err": str(err)}
        pid = self._fork(request, default)
        try:
            answer = self._answer(timeout)
            code, self.last_cpu_s = answer["code"], answer["cpu_s"]
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):  # it may end as the time runs out
                os.kill(pid, signal.SIGKILL)
            self._answer(None)
            raise subprocess.TimeoutExpired(["python", "-m", module, *argv], timeout, _read(out), _read(err)) from None
        finally:
            stdout, stderr = _read(out), _read(err)
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)
        return subprocess.CompletedProcess(["python", "-m", module, *argv], code, stdout, stderr)

    def _answer(self, timeout: float | None) -> dict:
        """The zygote's next line, read from its pipe unbuffered: a buffered reader could hold the {"code"} line that
        came with the {"pid"} line, where select does not see it (a command that ended at once then timed out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the test zygote exited with {self.process.wait()}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        shutil.rmtree(self.streams, ignore_errors=True)


class Started:
    """A command `Zygote.start` forked: `pid` (its process group's too), `stdout` (its output's lines as they come),
    `poll`, `wait`, `communicate` and `returncode` as subprocess.Popen has them."""

    def __init__(self, zygote: Zygote, pid: int, output: Path):
        self.zygote, self.pid, self.returncode = zygote, pid, None
        self._output = open(output, errors="replace")
        self.stdout = _Stream(self._lines())

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self.zygote._answer(0)["code"]
            except TimeoutError:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = self.zygote._answer(timeout)["code"]
            except TimeoutError:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout) from None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        self.wait(timeout)
        return "".join(self.stdout), None

    def _lines(self):
        """Each line of the output once it is complete (the last one also without its newline), until the command has
        ended and all it wrote is read."""
        pending = ""
        while True:
            pending += self._output.readline()
            if pending.endswith("\n"):
                yield pending
                pending = ""
            elif self.poll() is not None:
                rest = pending + self._output.read()
                yield from rest.splitlines(keepends=True)
                self._output.close()
                return
            else:
                time.sleep(0.05)


class _Stream:
    """A started command's output as a pipe's reader gives it: its lines, or `read()` for all that is left."""

    def __init__(self, lines):
        self._lines = lines

    def __iter__(self):
        return self._lines

    def __next__(self) -> str:
        return next(self._lines)

    def read(self) -> str:
        return "".join(self._lines)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _child(request: dict) -> int:
    """In the forked child: become `python -m MODULE ARGV` and return its exit code."""
    import runpy

    if request.get("session"):
        os.setsid()  # as start_new_session=True: a signal to its process group reaches what it starts, and nothing else
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.dup(out) if request["err"] == request["out"] else os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.argv = ["-m", *request["argv"]]  # runpy puts the module's path first, as `python -m` does
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:  # as the interpreter ends on it: sys.exit("message") prints the message and exits 1
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:  # what the interpreter would print before exiting 1
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _exit(code: int) -> None:
    """End the child as the interpreter ends a program, less the teardown of every module (seconds for one that
    has imported TensorFlow, and nothing a command's result depends on): non-daemon threads joined, atexit
    handlers run (MLflow's among them), streams flushed."""
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def serve(preload: list[str]) -> None:
    import importlib

    for name in preload:
        importlib.import_module(name)
    if "tensorflow" not in preload and "tensorflow" in sys.modules:
        raise RuntimeError(f"importing {preload} loaded TensorFlow: a zygote of them would not start it in the child")
    gc.freeze()  # the imported modules' objects: the children's garbage collector leaves them (and their pages) alone
    requests, answers = sys.stdin, sys.stdout
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            requests.close()
            code = _child(request)
            _exit(code)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status, usage = os.wait4(pid, 0)
        answers.write(json.dumps({"code": os.waitstatus_to_exitcode(status), "cpu_s": usage.ru_utime + usage.ru_stime}) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve(sys.argv[1:])

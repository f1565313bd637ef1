"""Ctrl-C and SIGTERM as exceptions that never cut a store write in half.

`caught()` (the run's owner, seglab.engine.owner, holds it while a run is open) turns SIGTERM into
`Terminated` and Ctrl-C into KeyboardInterrupt; `one_write()` (every MLflow write of
seglab.tracking.run.Run) defers them until the write ends: raised halfway through the store's code they
would leave a database session or an upload abandoned mid-way, and the run's closing records (its
`error` tag) could then fail.  One that Python swallowed (raised in a `__del__`) is raised again at the
next training or scoring batch (`raise_if_swallowed`) or at the end of the next store write, whichever
comes first: a command stops on Ctrl-C in evaluation and export too, not only in training.  Only the
mechanism lives here, below the tracking layer that marks its writes; what a stop means for a run
(KILLED, the exit code, the line for the user) is the owner's."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator


class Terminated(BaseException):
    """SIGTERM (e.g. a scheduler cancelling the job) turned into an exception, so the run ends KILLED
    (and the command exits 143, seglab.errors)."""


_TERMINATED = threading.Event()  # set by the SIGTERM handler, so a swallowed exception is raised again
_writing = 0  # store writes under way (`one_write`, main thread only: signals are handled there)
_deferred: type[BaseException] | None = None  # the signal's exception that came during one of them
_swallowed: type[BaseException] | None = None  # a stop whose exception Python swallowed (see `_unraisable`)


def _raise_terminated(signum, frame):
    _TERMINATED.set()
    _raise_after_write(Terminated)


def _raise_interrupted(signum, frame):
    _raise_after_write(KeyboardInterrupt)


def _raise_after_write(exc_type: type[BaseException]) -> None:
    """Raise a signal's exception now, or, during a store write, once it ends."""
    global _deferred
    if _writing:
        _deferred = exc_type
    else:
        raise exc_type()


@contextlib.contextmanager
def one_write() -> Iterator[None]:
    """A store write that Ctrl-C and SIGTERM do not cut in half: their exception comes when it ends."""
    global _writing, _deferred
    _writing += 1
    try:
        yield
    finally:
        _writing -= 1
    if _writing == 0 and _deferred is not None:
        exc_type, _deferred = _deferred, None
        raise exc_type()
    if _writing == 0 and _swallowed is not None:
        raise_if_swallowed()


def catch() -> Callable[[], None]:
    """Install the handlers (in the main thread only: Python delivers signals there); a function that puts
    the previous ones back.  Ctrl-C is left alone where it is ignored (nohup, a shell's `&`)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    global _swallowed
    _TERMINATED.clear()
    _swallowed = None
    previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = None
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous_int = signal.signal(signal.SIGINT, _raise_interrupted)

    def restore() -> None:  # and forget the signal: it stopped this run, not the next one in the process
        global _swallowed
        _TERMINATED.clear()
        _swallowed = None
        signal.signal(signal.SIGTERM, previous_term)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
        sys.unraisablehook = previous_hook

    return restore


def _unraisable(report_others: Callable) -> Callable:
    """A `sys.unraisablehook` for the handlers' exceptions. A signal handled while Python runs a `__del__` or
    a weakref callback (a garbage collection, an import lock) raises there, and Python only reports it: "Exception
    ignored in ...", a traceback on the user's console, and the stop lost. This hook prints nothing and keeps the
    stop, which `raise_if_swallowed` raises again (at the next batch or store write); anything else is reported as before."""

    def hook(unraisable) -> None:
        global _swallowed
        for stop in (Terminated, KeyboardInterrupt):
            if unraisable.exc_type is not None and issubclass(unraisable.exc_type, stop):
                _swallowed = stop
                return
        report_others(unraisable)

    return hook


def terminated() -> bool:
    """Whether SIGTERM came since the handlers were installed (whatever became of its exception)."""
    return _TERMINATED.is_set()


def raise_if_swallowed() -> None:
    """Raise a signal's exception again if one came and was swallowed: raised where Python only reports it
    (in a `__del__`, an import lock's weakref callback; `_unraisable`), it would let the command go on to the
    end. Training calls this after every batch (engine/callbacks.py), scoring after every batch
    (engine/per_image.py), `one_write` after a store write when a swallowed stop is pending.  Once SIGTERM
    came it raises at every call (the run stops for good); a swallowed Ctrl-C, once."""
    global _swallowed
    swallowed, _swallowed = _swallowed, None
    if _TERMINATED.is_set():
        raise Terminated()
    if swallowed is not None:
        raise swallowed()

"""Signals the watched program handles, held while memdiag does its own work.

A program may install a Python handler that raises (``signal.alarm`` with a handler
raising ``TimeoutError`` is the classic) and the signal may arrive while memdiag is
inside ``gc.collect()`` or a heap walk.  :func:`deferred_signals` puts a recorder in
place of such handlers for the duration (main thread only: handlers run there), then
restores the program's handlers and raises each signal that arrived once more, so
the program's own handler runs, outside memdiag's frames.  SIGINT is never held:
Ctrl-C interrupts memdiag as it would the program.
"""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_C_SIGNAL: Any = importlib.import_module("_signal")
"""signal's C functions: signal.getsignal() runs Python code (a handler may fire in it)."""

__all__ = ["block_program_signals", "deferred_signals", "ignore_at_exit", "pending_signals"]

_HELD = ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGHUP", "SIGCHLD")


_HELD_NUMBERS = tuple(int(getattr(signal, name)) for name in _HELD if hasattr(signal, name))
# The C function: signal.getsignal wraps SIG_DFL/SIG_IGN in an enum in Python (~3 us a
# signal); the check asks for eight signals on every test.
_getsignal: Callable[[int], Any] = getattr(signal, "_signal", signal).getsignal
_setsignal: Callable[[int, Any], Any] = getattr(signal, "_signal", signal).signal


class _Recorder:
    def __init__(self) -> None:
        self.arrived: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self.arrived:
            self.arrived.append(signum)


@contextmanager
def deferred_signals(*, redeliver: bool = True) -> Iterator[list[int]]:
    """Hold the program's Python signal handlers while the block runs.

    Yields the list of signals that arrived; with ``redeliver`` they are raised again
    after the handlers are restored (the program's handler then runs, and what it
    raises propagates from here, as it would have from the program's own code)."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    recorder = _Recorder()
    saved: dict[int, Callable[[int, FrameType | None], Any]] = {}
    for signum in _HELD_NUMBERS:
        try:
            handler = _getsignal(signum)
            if callable(handler) and not isinstance(handler, _Recorder):
                _setsignal(signum, recorder)
                saved[signum] = handler
        except (OSError, ValueError, TypeError):
            continue
    try:
        yield recorder.arrived
    finally:
        for signum, previous in saved.items():
            try:
                _setsignal(signum, previous)
            except (OSError, ValueError, TypeError):
                pass
        if redeliver:
            for signum in recorder.arrived:
                if signum in saved:
                    signal.raise_signal(signum)


_AFTER = _Recorder()
"""Takes the program's handlers' place once it has ended (never removed)."""


def block_program_signals() -> frozenset[int]:
    """Hold, for good, the signals the program handles in Python: once it has ended
    (an interval timer whose handler raises keeps firing), memdiag's own work follows
    until the process exits, and the program's handlers must not run into it.

    Blocking the signal mask would not do: another thread (torch's) would take the
    signal and the main thread would still run the handler.  So each handler is
    replaced by a recorder, with C calls only, retried past a handler that runs at
    the first bytecode and raises.  Returns the held signals (see
    :func:`pending_signals`); empty off the main thread."""
    held: set[int] = set()
    for _ in range(8):
        try:
            if threading.current_thread() is not threading.main_thread():
                return frozenset()
            for name in _HELD:
                signum = _C_SIGNAL.__dict__.get(name)
                if signum is None or signum in held:
                    continue
                handler = _C_SIGNAL.getsignal(signum)
                if callable(handler) and handler is not _AFTER:
                    _C_SIGNAL.signal(signum, _AFTER)
                    held.add(signum)
            return frozenset(held)
        except Exception:  # noqa: BLE001 - the program's handler raised here
            continue
    return frozenset(held)


def pending_signals(held: frozenset[int]) -> list[int]:
    """Which of the ``held`` signals arrived since they were held."""
    return [s for s in _AFTER.arrived if s in held]


def ignore_at_exit(signums: list[int]) -> None:
    """Signals that kept arriving after the program ended (an interval timer) are
    ignored for the rest of the process: interpreter shutdown resets Python
    handlers to the default action, which for SIGALRM would kill the process and
    replace memdiag's exit code.  SIGCHLD is left alone (ignoring it reaps children)."""
    for signum in signums:
        if signum == getattr(signal, "SIGCHLD", None):
            continue
        try:
            signal.signal(signum, signal.SIG_IGN)
        except (OSError, ValueError):
            pass

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

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["deferred_signals"]

_HELD = ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGHUP", "SIGCHLD")


_HELD_NUMBERS = tuple(int(getattr(signal, name)) for name in _HELD if hasattr(signal, name))
# The C function: signal.getsignal wraps SIG_DFL/SIG_IGN in an enum in Python (~3 us a
# signal); the check asks for eight signals on every test.
_getsignal: Callable[[int], Any] = getattr(signal, "_signal", signal).getsignal


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
                signal.signal(signum, recorder)
                saved[signum] = handler
        except (OSError, ValueError, TypeError):
            continue
    try:
        yield recorder.arrived
    finally:
        for signum, previous in saved.items():
            try:
                signal.signal(signum, previous)
            except (OSError, ValueError, TypeError):
                pass
        if redeliver:
            for signum in recorder.arrived:
                if signum in saved:
                    signal.raise_signal(signum)

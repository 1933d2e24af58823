"""Where memdiag's own output goes after the watched program did what it liked with stdio.

A program may close file descriptor 2, set ``sys.stderr = None``, replace
``sys.stdout`` with its own object or redirect the descriptors to ``/dev/null``;
memdiag's report must still reach the terminal or log that memdiag was started
with.  :class:`OriginalStdio` keeps a duplicate of descriptors 1 and 2 from the
moment memdiag starts, and hands out the program's current stream while it is
still the one memdiag started with, else a stream over the duplicate.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, TextIO

__all__ = ["OriginalStdio", "usable"]


def usable(stream: Any) -> bool:
    """``stream`` can be written: not ``None``, not closed, its descriptor still open."""
    if stream is None or getattr(stream, "closed", False):
        return False
    fd = _fileno(stream)
    if fd is None:
        return hasattr(stream, "write")
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _fileno(stream: Any) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) else None


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class OriginalStdio:
    """The stdout and stderr memdiag was started with, whatever the program does later."""

    def __init__(self) -> None:
        self._objects: dict[int, Any] = {1: sys.stdout, 2: sys.stderr}
        self._identities = {fd: _identity(fd) for fd in (1, 2)}
        self._dups: dict[int, int | None] = {}
        for fd in (1, 2):
            try:
                self._dups[fd] = os.dup(fd)
            except OSError:  # started with the descriptor closed: nowhere to write
                self._dups[fd] = None
        self._streams: dict[int, TextIO] = {}

    def stdout(self) -> TextIO:
        return self._stream(1)

    def stderr(self) -> TextIO:
        return self._stream(2)

    def replaced(self, fd: int) -> bool:
        """The program closed, replaced or redirected ``fd``'s stream since the start."""
        current = sys.stdout if fd == 1 else sys.stderr
        if current is not self._objects[fd] or not usable(current):
            return True
        own = _fileno(current)
        return own is not None and own == fd and _identity(fd) != self._identities[fd]

    def _stream(self, fd: int) -> TextIO:
        if not self.replaced(fd):
            current: TextIO = sys.stdout if fd == 1 else sys.stderr
            return current
        if fd not in self._streams:
            self._streams[fd] = self._open_dup(fd)
        return self._streams[fd]

    def _open_dup(self, fd: int) -> TextIO:
        dup = self._dups.get(fd)
        if dup is None:
            return io.StringIO()  # memdiag itself was started without this stream
        original = self._objects[fd]
        encoding = getattr(original, "encoding", None) or "utf-8"
        try:
            return open(
                os.dup(dup),
                "w",
                encoding=encoding,
                errors="backslashreplace",
                buffering=1,
                closefd=True,
            )
        except (OSError, LookupError):
            return io.StringIO()

    def close(self) -> None:
        for stream in self._streams.values():
            try:
                stream.flush()
                stream.close()
            except (OSError, ValueError):
                pass
        self._streams.clear()
        for fd, dup in self._dups.items():
            if dup is not None:
                try:
                    os.close(dup)
                except OSError:
                    pass
            self._dups[fd] = None


def quiet_exit_streams() -> None:
    """Before the interpreter exits: a stream whose pending output can no longer be
    flushed (its descriptor was closed) would turn the exit code into 120."""
    for name in ("stdout", "stderr"):
        # sys.__dict__, not getattr(): the program may have replaced the builtins
        stream = sys.__dict__.get(name)
        if stream is None:
            continue
        try:
            closed = stream.closed
        except Exception:  # noqa: BLE001 - a stream object without the attribute
            closed = False
        if closed:
            continue
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a stream of the program's making that fails
            sys.__dict__[name] = None

"""The one protocol every renderer speaks, and an atomic file writer for it."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol, TextIO

__all__ = ["Renderer", "write_report"]


class Renderer(Protocol):
    """A report in one output format, built from a :class:`~memdiag.values.result.CheckResult`."""

    def render(self, file: TextIO) -> None:
        """Write the whole report to ``file``."""


def write_report(renderer: Renderer, path: str | Path) -> Path:
    """Render into ``path`` atomically: a half-written report is never left behind.

    A symlink is written through (its target gets the report, the link stays); an
    existing file keeps its permission bits; a path that is not a regular file
    (``/dev/stdout``, a FIFO) is written directly.  Returns the path written."""
    try:
        mode: int | None = os.stat(path).st_mode  # through symlinks
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(path, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as file:
            renderer.render(file)
        return Path(path)
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never through someone's symlink; 0o666 & ~umask as for a new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as file:
            renderer.render(file)
        if mode is not None:
            os.chmod(tmp, stat.S_IMODE(mode))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return target

"""The one protocol every renderer speaks, and an atomic file writer for it."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TextIO

__all__ = ["Renderer", "write_report"]


class Renderer(Protocol):
    """A report in one output format, built from a :class:`~memdiag.values.result.CheckResult`."""

    def render(self, file: TextIO) -> None:
        """Write the whole report to ``file``."""


def write_report(renderer: Renderer, path: str | Path) -> Path:
    """Render into ``path`` atomically: a half-written report is never left behind."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        # Lone surrogates (non-UTF-8 file names, phase names) are written escaped.
        with tmp.open("w", encoding="utf-8", errors="backslashreplace", newline="\n") as file:
            renderer.render(file)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target

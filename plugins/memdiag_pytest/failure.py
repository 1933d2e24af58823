"""A failed check as pytest shows it: a one-line message, a long repr and a report section.

Standard library only: the controller of an xdist run and the parent of ``--forked``
rebuild the repr from the plain data the check's process attached to the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from _pytest._code.code import TerminalRepr
from _pytest._io import TerminalWriter

__all__ = ["SECTION", "LeakFailure", "LeakRepr", "MessageRepr"]

SECTION = "memdiag leak report"


class _Writer(Protocol):
    def line(self, s: str = "", **markup: bool) -> None: ...


@dataclass(frozen=True)
class CrashLocation:
    """What pytest's short summary, ``--tb=line`` and JUnit XML read: ``.message``."""

    path: str
    lineno: int
    message: str

    def toterminal(self, tw: _Writer) -> None:
        tw.line(str(self))

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.message}"


class MessageRepr(TerminalRepr):
    """A failure memdiag reports: ``reprcrash.message`` is its one-line summary."""

    def __init__(self, message: str, long_repr: str, path: str, lineno: int) -> None:
        self.long_repr = long_repr
        self.reprcrash = CrashLocation(path, lineno, message)

    def toterminal(self, tw: TerminalWriter) -> None:
        for line in self.long_repr.splitlines():
            tw.line(line, red=line.startswith("memdiag:"))

    def __str__(self) -> str:
        return self.long_repr


class LeakRepr(MessageRepr):
    """The long repr of a leak failure."""

    def __init__(self, failure: LeakFailure, path: str, lineno: int) -> None:
        super().__init__(failure.message, failure.long_repr, path, lineno)
        self.failure = failure


@dataclass(frozen=True)
class LeakFailure:
    """One failed check (leak, or peak over budget) of one test or fixture scope."""

    message: str
    """One line: device, bytes over baseline, tolerance, top retainer."""
    long_repr: str
    """The message and the findings in short; the full report is :attr:`section`."""
    section: str
    """Rendered report: phase table, findings, retainer chains."""

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "long_repr": self.long_repr}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeakFailure:
        return cls(message=str(data["message"]), long_repr=str(data["long_repr"]), section="")

    def combined_with(self, original: str) -> str:
        """The text for a report that already failed on its own: both, clearly apart."""
        rule = "-" * 20
        return (
            f"{original.rstrip()}\n\n{rule} and, separately, memdiag found {rule}\n{self.long_repr}"
        )

"""Markdown for PR pages: ``--markdown FILE`` and ``$GITHUB_STEP_SUMMARY``.

One renderer per report: the per-test gate (:class:`~memdiag.report.gate.GateResult`),
the per-device comparison of two ``memdiag run`` reports, a pytest session report and
a single run.  GitHub-flavoured: a verdict line, then tables; long lists are cut to
:data:`MAX_ROWS` rows and the rest folded into ``<details>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from memdiag.report.compare import COLUMNS, Comparison
from memdiag.report.gate import Change, GateResult, TestChange
from memdiag.report.session import SessionReport
from memdiag.values.holders import held_text
from memdiag.values.result import CheckResult
from memdiag.values.units import format_bytes

__all__ = [
    "MAX_ROWS",
    "MarkdownReport",
    "append_step_summary",
    "comparison_markdown",
    "gate_markdown",
    "run_markdown",
    "session_markdown",
]

MAX_ROWS = 30
_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def _cell(text: object) -> str:
    """A table cell: pipes escaped, newlines folded, backticks kept balanced."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _code(text: str) -> str:
    return f"`{text.replace('`', chr(39))}`" if text else ""


def _size(value: int | None, *, signed: bool = False) -> str:
    return "-" if value is None else format_bytes(value, signed=signed)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A table; a header ending in a space marks a right-aligned (numeric) column."""
    align = ["---:" if h.endswith(" ") else "---" for h in header]
    lines = [
        "| " + " | ".join(h.strip() for h in header) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _cut(rows: Sequence[Sequence[object]], header: Sequence[str]) -> list[str]:
    """The first :data:`MAX_ROWS` rows as a table, the rest folded away."""
    lines = _table(header, rows[:MAX_ROWS])
    rest = rows[MAX_ROWS:]
    if rest:
        lines += ["", f"<details><summary>{len(rest)} more</summary>", ""]
        lines += _table(header, rest)
        lines += ["", "</details>"]
    return lines


def gate_markdown(result: GateResult, *, title: str = "memdiag: memory gate") -> str:
    """The per-test gate: verdict, regressions with their numbers, then the rest."""
    icon = ":x:" if result.failed else ":white_check_mark:"
    lines = [f"### {title}", "", f"{icon} **{result.verdict()}**", ""]
    header = ["change", "test", "device", "base ", "head ", "change ", "detail"]

    def row(c: TestChange) -> list[object]:
        return [
            f"**{c.change.value}**" if c.regression else c.change.value,
            _code(c.test),
            c.device,
            _size(c.base),
            _size(c.head),
            _size(c.growth, signed=True),
            c.detail,
        ]

    regressions = [row(c) for c in result.regressions]
    others = [row(c) for c in result.changes if not c.regression]
    if regressions:
        lines += [*_cut(regressions, header), ""]
    if others:
        counts = result.counts()
        what = ", ".join(
            f"{counts[c]} {c.value}" for c in Change if not c.regression and c in counts
        )
        lines += [f"<details><summary>Not regressions: {what}</summary>", ""]
        lines += [*_table(header, others), "", "</details>", ""]
    for note in result.notes:
        lines.append(f"- {note}")
    lines += ["", f"<sub>{result.tolerances()}</sub>", ""]
    return "\n".join(lines)


def comparison_markdown(comparison: Comparison, *, title: str = "memdiag: memory gate") -> str:
    """Two ``memdiag run`` reports, per device."""
    icon = ":x:" if comparison.worse else ":white_check_mark:"
    lines = [f"### {title}", "", f"{icon} **{comparison.verdict()}**", ""]
    header = [COLUMNS[0], *(f"{column} " for column in COLUMNS[1:])]  # numbers right-aligned
    rows = [d.cells() for d in comparison.devices]
    lines += [*_table(header, rows), ""]
    lines += [f"- {reason}" for reason in comparison.reasons()]
    lines += [f"- note: {note}" for note in comparison.notes]
    lines += ["", f"<sub>tolerance {format_bytes(comparison.tolerance)}</sub>", ""]
    return "\n".join(lines)


def session_markdown(report: SessionReport, *, title: str = "memdiag: leak check") -> str:
    """A pytest session: leaking tests, known leaks, tests over their peak budget."""
    icon = ":x:" if report.failed else ":white_check_mark:"
    lines = [f"### {title}", "", f"{icon} **{report.summary()}**", ""]
    header = ["test", "device", "leaked ", "held by"]
    leaking = [
        [
            _code(e.nodeid if e.scope == "function" else e.unit),
            e.device or "-",
            _size(e.bytes),
            e.held,
        ]
        for e in sorted(report.leaking, key=lambda e: -e.bytes)
    ]
    if leaking:
        lines += ["**Leaking**", "", *_cut(leaking, header), ""]
    known = [
        [
            _code(e.unit),
            leak.signature.device,
            _size(leak.bytes),
            f"{', '.join(leak.signature.roots) or leak.signature.kind} "
            f"(recorded {_size(leak.recorded)})",
        ]
        for e in report.with_known
        for leak in e.known
    ]
    if known:
        lines += ["<details><summary>Known leaks (not failed)</summary>", ""]
        lines += [*_table(header, known), "", "</details>", ""]
    over = [[_code(e.nodeid), "; ".join(e.peak_failures)] for e in report.over_peak]
    if over:
        lines += ["**Over their max_peak budget**", "", *_cut(over, ["test", "peak"]), ""]
    lines += [f"- {notice}" for notice in report.notices]
    if report.settings:
        lines += ["", f"<sub>{_cell(report.settings)}</sub>"]
    lines.append("")
    return "\n".join(lines)


def run_markdown(result: CheckResult, *, name: str = "") -> str:
    """One ``memdiag run``: the verdict and its findings."""
    icon = ":x:" if result.leaked else ":white_check_mark:"
    what = f" of {_code(name)}" if name else ""
    lines = [f"### memdiag: leak check{what}", "", f"{icon} **{_cell(result.summary())}**", ""]
    rows = [
        [
            "**leak**" if f.is_leak else "note",
            f.device,
            _size(f.nbytes),
            f.kind.heading,
            held_text(f.retainers, f.nbytes) or f.message,
        ]
        for f in result.findings
    ]
    if rows:
        lines += [*_cut(rows, ["", "device", "bytes ", "class", "held by"]), ""]
    return "\n".join(lines)


class MarkdownReport:
    """A Markdown text as a :class:`~memdiag.report.base.Renderer`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self, file: TextIO) -> None:
        file.write(self.text if self.text.endswith("\n") else self.text + "\n")


def append_step_summary(text: str, *, env: Iterable[tuple[str, str]] | None = None) -> Path | None:
    """Append ``text`` to ``$GITHUB_STEP_SUMMARY`` when set (GitHub Actions); the
    path written, or ``None``.  Raises ``OSError`` when the file cannot be written."""
    values = dict(env) if env is not None else os.environ
    target = values.get(_SUMMARY_ENV)
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as file:
        file.write(text if text.endswith("\n") else text + "\n")
    return path

"""The PR gate on test suites: a head session report against its base's, per test.

Regressions (the gate fails): a test that leaks where base did not (``new leak``),
a leak that grew beyond the tolerance (``leak grew``), a known leak beyond its
recorded bytes plus tolerance (``known leak grew``), and a peak that grew beyond the
peak tolerance (``peak grew``).  Reported, never failed: leaks base already had
(``still leaking``), known leaks within their size (``known leak``) and tests that
``stopped leaking``.

A peak's growth is judged net of what the test still holds at its end (a leak, or
a known leak, raises the peak by its own bytes; it is judged as a leak), and is a
regression when it exceeds both the absolute tolerance and the percentage of the
base peak.  Base and head leaks are matched by signature; a test that leaks in
both under another retainer is the same leak moved, judged on its bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from memdiag.report.console import report_table
from memdiag.report.known import KnownLeaks, LeakRecord
from memdiag.report.session import DeviceNumbers, SessionReport, TestEntry
from memdiag.values.units import format_bytes, plural

__all__ = ["Change", "GateResult", "TestChange", "compare_sessions"]


class Change(str, Enum):
    """What happened to one test between base and head."""

    NEW_LEAK = "new leak"
    LEAK_GREW = "leak grew"
    KNOWN_GREW = "known leak grew"
    PEAK_GREW = "peak grew"
    STILL_LEAKING = "still leaking"
    KNOWN = "known leak"
    FIXED = "stopped leaking"

    @property
    def regression(self) -> bool:
        return self in _REGRESSIONS


_REGRESSIONS = frozenset({Change.NEW_LEAK, Change.LEAK_GREW, Change.KNOWN_GREW, Change.PEAK_GREW})


@dataclass(frozen=True)
class TestChange:
    """One line of the gate: a test, a device, the base and head bytes, and why."""

    __test__ = False  # not a pytest test class

    change: Change
    test: str
    device: str
    base: int | None
    head: int | None
    allowed: int
    """Growth the tolerance allows here (known leaks: over the recorded bytes)."""
    detail: str = ""

    @property
    def regression(self) -> bool:
        return self.change.regression

    @property
    def growth(self) -> int | None:
        if self.head is None:
            return None
        return self.head - (self.base or 0)

    @property
    def impact(self) -> int:
        """Bytes that make this line matter: growth for regressions, size otherwise."""
        if self.change is Change.FIXED:
            return self.base or 0
        if self.change in (Change.STILL_LEAKING, Change.KNOWN):
            return self.head or 0
        return self.growth or 0

    def describe(self) -> str:
        """One sentence with the numbers."""
        base = "-" if self.base is None else format_bytes(self.base)
        head = "-" if self.head is None else format_bytes(self.head)
        tolerance = format_bytes(self.allowed)
        detail = f"; {self.detail}" if self.detail else ""
        if self.change is Change.NEW_LEAK:
            return f"{self.test}: new leak of {head} on {self.device}{detail}"
        if self.change is Change.LEAK_GREW:
            return (
                f"{self.test}: leak on {self.device} grew {base} -> {head} "
                f"(tolerance {tolerance}){detail}"
            )
        if self.change is Change.KNOWN_GREW:
            return (
                f"{self.test}: known leak on {self.device} grew to {head}, recorded {base} "
                f"(tolerance {tolerance}){detail}"
            )
        if self.change is Change.PEAK_GREW:
            return (
                f"{self.test}: peak on {self.device} grew {base} -> {head} over baseline "
                f"(allowed {tolerance}){detail}"
            )
        if self.change is Change.FIXED:
            return f"{self.test}: stopped leaking on {self.device} (base leaked {base}){detail}"
        if self.change is Change.KNOWN:
            return f"{self.test}: known leak of {head} on {self.device}{detail}"
        return f"{self.test}: still leaks on {self.device}, {base} -> {head}{detail}"


def _sort_key(line: TestChange) -> tuple[bool, int, str, str]:
    return (not line.regression, -line.impact, line.test, line.device)


@dataclass(frozen=True)
class GateResult:
    """Every change between base and head, regressions first, biggest impact first."""

    changes: tuple[TestChange, ...]
    tolerance: int
    peak_tolerance: int
    peak_percent: float
    base_tests: int
    head_tests: int
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "changes", tuple(sorted(self.changes, key=_sort_key)))

    @property
    def regressions(self) -> tuple[TestChange, ...]:
        return tuple(c for c in self.changes if c.regression)

    @property
    def failed(self) -> bool:
        return bool(self.regressions)

    def counts(self) -> dict[Change, int]:
        out: dict[Change, int] = {}
        for line in self.changes:
            out[line.change] = out.get(line.change, 0) + 1
        return out

    def tolerances(self) -> str:
        return (
            f"leak tolerance {format_bytes(self.tolerance)}; peak tolerance "
            f"{format_bytes(self.peak_tolerance)} and {self.peak_percent:g}% of base"
        )

    def verdict(self) -> str:
        """The last line: FAIL with what regressed, or OK with what was compared."""
        regressions = self.regressions
        if regressions:
            counts = self.counts()
            what = ", ".join(
                f"{counts[c]} {c.value}" for c in Change if c.regression and c in counts
            )
            return f"FAIL: {plural(len(regressions), 'regression')} in head: {what}"
        return (
            f"OK: no memory regression in {self.head_tests} checked tests "
            f"(base {self.base_tests}; {self.tolerances()})"
        )

    def table(self, *, limit: int | None = None) -> Table:
        table = report_table(f"base vs head, per test ({self.tolerances()})")
        table.add_column("change")
        table.add_column("test", overflow="fold")
        table.add_column("device")
        for column in ("base", "head", "change"):
            table.add_column(column, justify="right", no_wrap=True)
        shown = self.changes if limit is None else self.changes[:limit]
        for line in shown:
            growth = line.growth
            table.add_row(
                line.change.value,
                line.test,
                line.device,
                "-" if line.base is None else format_bytes(line.base),
                "-" if line.head is None else format_bytes(line.head),
                "-" if growth is None else format_bytes(growth, signed=True),
                style="red"
                if line.regression
                else ("green" if line.change is Change.FIXED else None),
            )
        return table

    def render_to(self, console: Console, *, verbosity: int = 0) -> None:
        limit = None if verbosity > 0 else 50
        if self.changes:
            console.print(self.table(limit=limit))
            if limit is not None and len(self.changes) > limit:
                console.print(f"...and {len(self.changes) - limit} more lines (-v shows all)")
        for note in self.notes:
            console.print(Text(f"note: {note}", style="dim"))
        for line in self.regressions:
            console.print(Text(f"regression: {line.describe()}", style="red"), soft_wrap=True)
        style = "bold red" if self.failed else "bold green"
        console.print(Text(self.verdict(), style=style), soft_wrap=True)

    def render(self, file: TextIO) -> None:
        self.render_to(Console(file=file, highlight=False))


def _unit_entries(report: SessionReport) -> dict[str, TestEntry]:
    return {e.unit: e for e in report.tests if e.checked}


def _rejudge(leak: LeakRecord, known: KnownLeaks | None) -> LeakRecord:
    """A head leak judged against ``known`` when given (else as the head run judged)."""
    if known is None:
        return leak
    entry = known.find(leak.signature)
    if entry is None:
        return LeakRecord(leak.signature, leak.bytes)
    return LeakRecord(leak.signature, leak.bytes, leak.bytes <= entry.limit, entry.bytes)


def _leak_changes(
    test: str,
    base: Sequence[LeakRecord],
    head: Sequence[LeakRecord],
    *,
    tolerance: int,
    known: KnownLeaks | None,
    in_head: bool,
) -> list[TestChange]:
    out: list[TestChange] = []
    unmatched = {leak.signature.key: leak for leak in base}
    pending: list[LeakRecord] = []
    for raw in head:
        leak = _rejudge(raw, known)
        sig = leak.signature
        before = unmatched.pop(sig.key, None)
        roots = ", ".join(sig.roots)
        held = f"held by {roots}" if roots else sig.kind
        if leak.known:
            out.append(
                TestChange(Change.KNOWN, test, sig.device, leak.recorded, leak.bytes, 0, held)
            )
        elif leak.recorded is not None:
            limit = known.find(sig) if known is not None else None
            allowed = limit.tolerance if limit is not None else 0
            out.append(
                TestChange(
                    Change.KNOWN_GREW, test, sig.device, leak.recorded, leak.bytes, allowed, held
                )
            )
        elif before is not None:
            out.append(_still_or_grew(test, before, leak, tolerance, held))
        else:
            pending.append(leak)
    for leak in pending:
        sig = leak.signature
        held = f"held by {', '.join(sig.roots)}" if sig.roots else sig.kind
        moved = next(
            (
                b
                for b in unmatched.values()
                if (b.signature.kind, b.signature.device) == (sig.kind, sig.device)
            ),
            None,
        )
        if moved is not None:
            del unmatched[moved.signature.key]
            was = ", ".join(moved.signature.roots) or moved.signature.retainer or "?"
            out.append(_still_or_grew(test, moved, leak, tolerance, f"{held} (base: {was})"))
        else:
            out.append(TestChange(Change.NEW_LEAK, test, sig.device, None, leak.bytes, 0, held))
    if in_head:
        for leak in unmatched.values():
            if leak.known:
                continue
            roots = ", ".join(leak.signature.roots)
            out.append(
                TestChange(
                    Change.FIXED,
                    test,
                    leak.signature.device,
                    leak.bytes,
                    0,
                    0,
                    f"was held by {roots}" if roots else "",
                )
            )
    return out


def _still_or_grew(
    test: str, before: LeakRecord, leak: LeakRecord, tolerance: int, held: str
) -> TestChange:
    change = Change.LEAK_GREW if leak.bytes - before.bytes > tolerance else Change.STILL_LEAKING
    return TestChange(
        change, test, leak.signature.device, before.bytes, leak.bytes, tolerance, held
    )


def _peak_changes(
    test: str,
    base: Sequence[DeviceNumbers],
    head: Sequence[DeviceNumbers],
    *,
    tolerance: int,
    percent: float,
) -> list[TestChange]:
    out = []
    before = {d.device: d for d in base}
    for now in head:
        then = before.get(now.device)
        if then is None or then.peak is None or now.peak is None:
            continue
        kept = 0
        if now.end is not None and then.end is not None:
            kept = max(0, now.end - then.end)
        allowed = max(tolerance, int(max(then.peak, 0) * percent / 100))
        excess = now.peak - then.peak - kept
        if excess > allowed:
            detail = "" if now.peak_exact else "CPU-style peak: highest phase-end reading"
            if kept:
                detail = f"{format_bytes(kept)} of it still held at the end" + (
                    f"; {detail}" if detail else ""
                )
            out.append(
                TestChange(
                    Change.PEAK_GREW, test, now.device, then.peak, now.peak, allowed + kept, detail
                )
            )
    return out


def compare_sessions(
    base: SessionReport,
    head: SessionReport,
    *,
    tolerance: int,
    peak_tolerance: int,
    peak_percent: float,
    known: KnownLeaks | None = None,
) -> GateResult:
    """Per test: leaks new, grown, known, fixed; peaks grown.  ``known`` (a known-leaks
    file) re-judges head's leaks; without it, head's own verdict on them stands."""
    before = _unit_entries(base)
    after = _unit_entries(head)
    changes: list[TestChange] = []
    for unit, entry in after.items():
        then = before.get(unit)
        changes.extend(
            _leak_changes(
                unit,
                then.leaks if then is not None else (),
                entry.leaks,
                tolerance=tolerance,
                known=known,
                in_head=True,
            )
        )
        if then is not None:
            changes.extend(
                _peak_changes(
                    unit,
                    then.devices,
                    entry.devices,
                    tolerance=peak_tolerance,
                    percent=peak_percent,
                )
            )
    notes = []
    only_base = [u for u in before if u not in after]
    only_head = [u for u in after if u not in before]
    if only_base:
        notes.append(
            f"{plural(len(only_base), 'test')} only in base (removed or not run): "
            + _few(only_base)
        )
    if only_head:
        notes.append(f"{plural(len(only_head), 'test')} only in head (new): " + _few(only_head))
    if base.settings and head.settings and base.settings != head.settings:
        notes.append(f"settings differ: base {base.settings!r}, head {head.settings!r}")
    return GateResult(
        changes=tuple(changes),
        tolerance=tolerance,
        peak_tolerance=peak_tolerance,
        peak_percent=peak_percent,
        base_tests=len(before),
        head_tests=len(after),
        notes=tuple(notes),
    )


def _few(names: Sequence[str], count: int = 3) -> str:
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")

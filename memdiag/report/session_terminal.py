"""A pytest session report on the terminal (``memdiag report session.json``):
leaking tests, known leaks, tests over their peak budget, the highest peaks."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from memdiag.report.console import report_table
from memdiag.report.facts import limit_for
from memdiag.report.session import SessionReport, TestEntry
from memdiag.report.summary import finding_lines
from memdiag.values.units import format_bytes

__all__ = ["render_session"]


def _table(title: str, *columns: str) -> Table:
    table = report_table(title)
    for column in columns:
        table.add_column(column, justify="right" if column in ("leaked", "peak") else "left")
    return table


def _label(entry: TestEntry) -> str:
    return entry.nodeid if entry.scope == "function" else f"{entry.unit} {entry.unit_label}"


def _peaks(report: SessionReport, count: int) -> list[tuple[int, str, str, bool]]:
    rows = [
        (d.peak, e.unit, d.device, d.peak_exact)
        for e in report.checked
        for d in e.devices
        if d.peak is not None and d.peak > 0
    ]
    return sorted(rows, key=lambda r: (-r[0], r[1]))[:count]


def render_session(report: SessionReport, console: Console, *, verbosity: int = 0) -> None:
    """Summary, then the leaking tests (biggest first), known leaks, peak budgets;
    ``-v`` adds each leak's findings and the tests with the highest peaks."""
    console.print(Text(f"memdiag session report: {report.summary()}", style="bold"))
    if report.settings:
        console.print(Text(f"settings: {report.settings}", style="dim"))
    limit = limit_for(verbosity + 1)
    leaking = sorted(report.leaking, key=lambda e: (-e.bytes, e.nodeid))
    if leaking:
        table = _table("leaking tests", "test", "device", "leaked", "held by")
        for entry in leaking[:limit]:
            table.add_row(_label(entry), entry.device, format_bytes(entry.bytes), entry.held)
        console.print(table)
        if limit is not None and len(leaking) > limit:
            console.print(f"...and {len(leaking) - limit} more leaking tests (-v shows more)")
    known = [(e, leak) for e in report.with_known for leak in e.known]
    if known:
        table = _table("known leaks (reported, not failed)", "test", "device", "leaked", "held by")
        for entry, leak in known[:limit]:
            recorded = "" if leak.recorded is None else f" (recorded {format_bytes(leak.recorded)})"
            held = ", ".join(leak.signature.roots) or leak.signature.kind
            table.add_row(
                entry.unit, leak.signature.device, format_bytes(leak.bytes), held + recorded
            )
        console.print(table)
    for entry in report.over_peak:
        for text in entry.peak_failures:
            console.print(Text(f"over budget: {entry.nodeid}: {text}", style="red"), soft_wrap=True)
    if verbosity > 0:
        for entry in leaking[:limit]:
            result = entry.check_result()
            if result is None:
                continue
            console.print(Text(f"{_label(entry)}:", style="bold"), soft_wrap=True)
            for line in finding_lines(result.leaks, result=result):
                console.print(f"  {line}", markup=False)
        peaks = _peaks(report, 10)
        if peaks:
            table = _table("highest peaks over baseline", "test", "device", "peak")
            for peak, unit, device, exact in peaks:
                table.add_row(unit, device, format_bytes(peak) + ("" if exact else " (>=)"))
            console.print(table)
    for notice in report.notices:
        console.print(Text(f"note: {notice}", style="dim"), soft_wrap=True)
    if report.failed:
        names = ", ".join(e.unit for e in (*leaking, *report.over_peak)[:5])
        console.print(Text(f"FAIL: {report.summary()}: {names}", style="bold red"), soft_wrap=True)
    else:
        console.print(Text(f"OK: {report.summary()}", style="bold green"), soft_wrap=True)

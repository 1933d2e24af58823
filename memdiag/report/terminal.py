"""Terminal report with rich: a phase table per device, then the findings."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from memdiag.findings import Finding
from memdiag.readings import DeviceReading
from memdiag.result import CheckResult
from memdiag.units import format_bytes

__all__ = ["render_terminal"]


def _b(value: int | None) -> str:
    return "-" if value is None else format_bytes(value)


def _phase_table(result: CheckResult, device: str) -> Table:
    check = next(d for d in result.devices if d.device == device)
    table = Table(title=f"{device}", title_justify="left", expand=False, pad_edge=False)
    for column in ("phase", "allocated", "reserved", "peak alloc", "driver used", "this process"):
        table.add_column(column, justify="left" if column == "phase" else "right")

    def row(name: str, r: DeviceReading | None, peak: bool) -> None:
        if r is None:
            return
        table.add_row(
            name,
            _b(r.allocated),
            _b(r.reserved),
            _b(r.peak_allocated) if peak else "",
            _b(r.driver_used),
            _b(r.process_used),
        )

    row("baseline", check.baseline, False)
    for record in result.phases:
        row(f"end of {record.name}", record.reading(device), True)
    row("final check", check.final, False)
    return table


def _finding_lines(finding: Finding, verbosity: int) -> list[Text]:
    style = "bold red" if finding.is_leak else "yellow"
    label = "LEAK" if finding.is_leak else "note"
    lines = [
        Text.assemble(
            (f"{label} ", style),
            (f"[{finding.kind.title}] ", "bold"),
            finding.headline(),
        )
    ]
    limit = 5 if verbosity <= 0 else (20 if verbosity == 1 else 10**9)
    for group in finding.retainers[:limit]:
        chain = group.get("chain_text") or ""
        count = group.get("tensor_count", 0)
        lines.append(
            Text(f"    held by: {chain}  [{format_bytes(group.get('retained_bytes', 0))}, "
                 f"{count} tensors]")
        )
        site = group.get("alloc_site")
        if site:
            lines.append(Text(f"      allocated at {site}"))
    for group in finding.tensors[:limit]:
        lines.append(Text(f"    {group.describe()}"))
    hidden = max(0, len(finding.tensors) - limit)
    if hidden:
        lines.append(Text(f"    ...and {hidden} more tensor groups (-v shows more)"))
    for proc in finding.processes[:limit]:
        lines.append(Text(f"    pid {proc.pid} {proc.name or '?'}: {format_bytes(proc.used)}"))
    if finding.advice:
        lines.append(Text(f"    -> {finding.advice}", style="cyan"))
    return lines


def render_terminal(result: CheckResult, console: Console, *, verbosity: int = 0) -> None:
    """Print the phase tables, findings and the verdict line."""
    for check in result.devices:
        console.print(_phase_table(result, check.device))
    for notice in result.notices:
        console.print(Text(f"notice: {notice}", style="dim"))
    if result.findings:
        console.print(Group(*[line for f in result.findings for line in _finding_lines(f, verbosity)]))
    verdict = Text("LEAK: ", style="bold red") if result.leaked else Text("OK: ", style="bold green")
    verdict.append(result.summary())
    console.print(verdict)

"""Terminal report with rich: a phase table per device, the findings biggest first
(class, retainer tree, example chain, allocation site, one line of advice), the
verdict.  Plain text without colour when the console is not a terminal; lists are
trimmed by verbosity with "…and N more"."""

from __future__ import annotations

from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.text import Text
from rich.tree import Tree

from memdiag.report.advice import advice_for, advice_for_group
from memdiag.report.console import plain_console, report_table
from memdiag.report.facts import (
    Point,
    device_points,
    groups_of,
    kind_label,
    limit_for,
    ordered_findings,
    shown_count,
    tolerance_for,
    unrooted_groups,
)
from memdiag.values.findings import Finding
from memdiag.values.result import CheckResult, DeviceCheck
from memdiag.values.retainers import RetainerGroup
from memdiag.values.units import format_bytes

__all__ = ["TerminalReport", "render_terminal"]


def _b(value: int | None) -> str:
    return "-" if value is None else format_bytes(value)


def _more(hidden: int, what: str) -> Text:
    return Text(f"…and {hidden} more {what} (-v shows more)", style="dim")


def has_driver_readings(points: list[Point]) -> bool:
    """Whether a driver (NVML, amdsmi) read this device: only then is its tolerance shown."""
    return any(p.driver_used is not None or p.process_used is not None for p in points)


def _tolerances(check: DeviceCheck, points: list[Point]) -> str:
    text = f"tolerance {format_bytes(check.allowance)}"
    if has_driver_readings(points):
        text += f", driver {format_bytes(check.driver_allowance)}"
    return text


_COLUMNS = ("allocated", "reserved", "driver used", "this process")


def phase_table(result: CheckResult, device: str) -> Group:
    """Baseline, each phase's peak (when known) and end, the final check; columns no
    source of this device reads (reserved and driver on CPU) are left out."""
    check = next(d for d in result.devices if d.device == device)
    points = device_points(result, device)
    title = Text(f"{device}: memory by phase ({_tolerances(check, points)})", style="bold")
    table = report_table()
    table.add_column("phase", overflow="fold")
    values = [(p.allocated, p.reserved, p.driver_used, p.process_used) for p in points]
    shown = [i for i in range(len(_COLUMNS)) if i == 0 or any(v[i] is not None for v in values)]
    for i in shown:
        table.add_column(_COLUMNS[i], justify="right", no_wrap=True)
    for point, row in zip(points, values, strict=True):
        peak = point.kind == "peak"
        cells = ["" if peak and i >= 2 else _b(row[i]) for i in shown]
        table.add_row(Text(point.label), *cells, style="dim" if peak else None)
    return Group(title, table)


def _group_node(tree: Tree, group: RetainerGroup, advice: str = "") -> None:
    head = Text.assemble(
        (format_bytes(group.retained_bytes), "bold"),
        f"  {group.root_name}  ",
        (f"[{group.root_kind}, {group.counts_text()}]", "dim"),
    )
    node = tree.add(head)
    node.add(Text(f"chain: {group.chain_text()}"))
    suspect = group.suspect_text()
    if suspect:
        node.add(Text(f"suspect: {suspect}", style="magenta"))
    if group.alloc_site:
        node.add(Text(f"allocated at {group.alloc_site}"))
    if group.known:
        node.add(Text(f"known: {group.known}", style="dim"))
    if group.other_roots:
        node.add(
            Text(
                f"also held by: {', '.join(group.other_roots)} (cut every one of them)",
                style="dim",
            )
        )
    if group.note:
        node.add(Text(group.note, style="dim"))
    if advice:
        node.add(Text(f"fix: {advice}", style="cyan"))


def _retainer_tree(
    groups: list[RetainerGroup],
    limit: int | None,
    heading: str = "retainers",
    *,
    tolerance: int | None = None,
) -> Tree:
    total = sum(g.retained_bytes for g in groups)
    plural = "s" if len(groups) != 1 else ""
    tree = Tree(Text(f"{heading}: {format_bytes(total)} in {len(groups)} group{plural}"))
    limit = shown_count(limit, [g.retained_bytes for g in groups], tolerance)
    top = advice_for_group(groups[0]) if groups else ""
    for index, group in enumerate(groups[:limit]):
        # The finding's "fix:" line is the top group's; another root's own fix is here.
        own = advice_for_group(group) if index else ""
        _group_node(tree, group, own if own != top else "")
    hidden = len(groups) - len(groups[:limit])
    if hidden:
        tree.add(_more(hidden, "retainers"))
    return tree


def finding_block(
    finding: Finding, verbosity: int = 0, *, tolerance: int | None = None
) -> RenderableType:
    """One finding: class and bytes, its message, retainers, tensors, processes, advice.

    Lists are trimmed by ``verbosity``, except that every retainer or tensor group
    holding more than ``tolerance`` bytes is always shown."""
    limit = limit_for(verbosity)
    label, style = ("LEAK", "bold red") if finding.is_leak else ("note", "yellow")
    parts: list[RenderableType] = [
        Text.assemble(
            (f"{label} ", style),
            (f"{format_bytes(finding.nbytes)} ", "bold"),
            (f"{kind_label(finding.kind)} ", "bold"),
            f"on {finding.device}",
        ),
        Padding(Text(finding.message), (0, 0, 0, 2), expand=False),
    ]
    details: list[RenderableType] = []
    groups = groups_of(finding)
    if groups:
        details.append(_retainer_tree(groups, limit, tolerance=tolerance))
    if finding.tensors:
        details.append(Text("tensors:"))
        shown = shown_count(limit, [g.nbytes for g in finding.tensors], tolerance)
        details.extend(Text(f"  {g.describe()}") for g in finding.tensors[:shown])
        hidden = len(finding.tensors) - len(finding.tensors[:shown])
        if hidden:
            details.append(_more(hidden, "tensor groups"))
    if finding.processes:
        details.append(Text("processes:"))
        details.extend(
            Text(f"  pid {p.pid} {p.name or '?'}: {format_bytes(p.used)}")
            for p in finding.processes[:limit]
        )
        hidden = len(finding.processes) - len(finding.processes[:limit])
        if hidden:
            details.append(_more(hidden, "processes"))
    advice = advice_for(finding)
    if advice:
        details.append(Text(f"fix: {advice}", style="cyan"))
    if details:
        parts.append(Padding(Group(*details), (0, 0, 0, 2), expand=False))
    return Group(*parts)


class TerminalReport:
    """The report for a person at a terminal (rich; plain text when not a TTY)."""

    def __init__(self, result: CheckResult, *, verbosity: int = 0) -> None:
        self.result = result
        self.verbosity = verbosity

    def render_to(self, console: Console) -> None:
        result = self.result
        for check in result.devices:
            console.print(phase_table(result, check.device))
            console.print()
        for notice in result.notices:
            console.print(Text(f"notice: {notice}", style="dim"))
        findings = ordered_findings(result)
        if findings:
            leaks = sum(1 for f in findings if f.is_leak)
            notes = len(findings) - leaks
            console.print(
                Text(
                    f"findings: {leaks} leak{'s' if leaks != 1 else ''}, "
                    f"{notes} note{'s' if notes != 1 else ''}, biggest first",
                    style="bold",
                )
            )
            for finding in findings:
                tolerance = tolerance_for(result, finding.device)
                console.print(finding_block(finding, self.verbosity, tolerance=tolerance))
        unrooted = unrooted_groups(result)
        if unrooted:
            heading = "not reached from any Python root"
            floor = min((d.allowance for d in result.devices), default=None)
            console.print(
                _retainer_tree(unrooted, limit_for(self.verbosity), heading, tolerance=floor)
            )
        verdict = (
            Text("LEAK: ", style="bold red") if result.leaked else Text("OK: ", style="bold green")
        )
        verdict.append(result.summary())
        console.print(verdict)

    def render(self, file: TextIO) -> None:
        self.render_to(plain_console(file))


def render_terminal(result: CheckResult, console: Console, *, verbosity: int = 0) -> None:
    """Print the phase tables, findings and the verdict line on ``console``."""
    TerminalReport(result, verbosity=verbosity).render_to(console)

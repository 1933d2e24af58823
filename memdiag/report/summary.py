"""One result in a line: the top leak, who holds it, and the signature of the bug.

What a test runner shows per failing test and groups failures by: the one-line
message (device, bytes over baseline, tolerance, top retainer), the top retainer of a
finding, and a signature that is the same for one bug in every test it fails.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable

from memdiag.report.console import plain_console
from memdiag.report.facts import shown_count, tolerance_for
from memdiag.report.terminal import render_terminal
from memdiag.values.findings import Finding, FindingKind
from memdiag.values.holders import held_text, in_blame_order
from memdiag.values.result import CheckResult
from memdiag.values.units import format_bytes

__all__ = ["finding_lines", "held_by", "leak_line", "render_text", "signature"]


def held_by(finding: Finding) -> str:
    """The top retainer of a finding, or the best description there is without one."""
    held = held_text(finding.retainers, finding.nbytes)
    if held:
        return held
    if finding.tensors:
        prefix = "held only by gc-frozen objects: " if finding.kind is FindingKind.GC_FROZEN else ""
        return prefix + finding.tensors[0].describe()
    return ""


def signature(result: CheckResult) -> str:
    """What identifies one bug across tests: the top leak's retainer-group signature
    when the retainer analysis gave one, else a hash of its kind, device type and
    leaked tensor shapes.  Empty when nothing leaked."""
    leaks = result.leaks
    if not leaks:
        return ""
    top = max(leaks, key=lambda f: f.nbytes)
    for group in top.retainers:
        if group.signature:
            return group.signature
    device_type = top.device.split(":")[0]
    shapes = sorted(f"{'x'.join(map(str, g.example.shape))}/{g.example.dtype}" for g in top.tensors)
    text = "|".join([top.kind.value, device_type, *shapes])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def leak_line(result: CheckResult) -> str:
    """``cpu: 4.0 MiB over baseline (tolerance 1.0 MiB), live tensors; held by ...``."""
    top = max(result.leaks, key=lambda f: f.nbytes)
    on_device = sum(f.nbytes for f in result.leaks if f.device == top.device)
    check = next((d for d in result.devices if d.device == top.device), None)
    tolerance = "" if check is None else f" (tolerance {format_bytes(check.allowance)})"
    more = len(result.leaks) - 1
    extra = f" [+{more} more finding{'s' if more > 1 else ''}]" if more else ""
    held = held_by(top)
    return (
        f"{top.device}: {format_bytes(on_device)} over baseline{tolerance}, "
        f"{top.kind.heading}{'; ' + held if held else ''}{extra}"
    )


def finding_lines(
    findings: Iterable[Finding], *, groups: int = 3, result: CheckResult | None = None
) -> list[str]:
    """A line per finding (``LEAK [class] device: message``, ``note [...] ...``), each
    followed by its biggest ``groups`` retainers with their own bytes
    (``    24.0 MiB held by: ...``); a retainer holding more than the tolerance
    ``result`` used on the device is never left out."""
    lines: list[str] = []
    for finding in findings:
        label = "LEAK" if finding.is_leak else "note"
        lines.append(f"{label} [{finding.kind.heading}] {finding.headline()}")
        ranked = in_blame_order(finding.retainers)
        floor = tolerance_for(result, finding.device)
        count = shown_count(groups, [g.retained_bytes for g in ranked], floor)
        lines.extend(
            f"    {format_bytes(g.retained_bytes)} held by: {g.chain_text()}"
            for g in ranked[:count]
        )
    return lines


def render_text(result: CheckResult, *, width: int, verbosity: int) -> str:
    """The terminal report as plain text (no colour), ``width`` columns wide."""
    buffer = io.StringIO()
    console = plain_console(buffer, width=width, color_system=None)
    render_terminal(result, console, verbosity=verbosity)
    return buffer.getvalue()

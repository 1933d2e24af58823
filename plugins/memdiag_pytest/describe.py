"""From a :class:`CheckResult` to what pytest shows: summary line, signature, report text.

Imported only when the leak check is active (it imports memdiag and rich).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console

from memdiag.report.terminal import render_terminal
from memdiag.values.findings import Finding, FindingKind
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult, PhaseRecord
from memdiag.values.units import format_bytes

from .failure import SECTION, LeakFailure

__all__ = [
    "PeakViolation",
    "build_failure",
    "held_by",
    "leak_line",
    "peak_violations",
    "render_report",
    "signature",
]


def held_by(finding: Finding) -> str:
    """The top retainer of a finding, or the best description there is without one."""
    for group in finding.retainers:
        chain = group.get("chain_text")
        if chain:
            return f"held by {chain}"
    if finding.tensors:
        prefix = "held only by gc-frozen objects: " if finding.kind is FindingKind.GC_FROZEN else ""
        return prefix + finding.tensors[0].describe()
    return ""


def signature(result: CheckResult) -> str:
    """What identifies one bug across tests: the retainer group's signature when the
    retainer analysis gave one, else the finding kind and the leaked tensor shapes."""
    leaks = result.leaks
    if not leaks:
        return ""
    top = max(leaks, key=lambda f: f.nbytes)
    for group in top.retainers:
        sig = group.get("signature")
        if sig:
            return str(sig)
    device_type = top.device.split(":")[0]
    shapes = sorted(f"{'x'.join(map(str, g.example.shape))}/{g.example.dtype}" for g in top.tensors)
    text = "|".join([top.kind.value, device_type, *shapes])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _allowance(result: CheckResult, device: str) -> int | None:
    check = next((d for d in result.devices if d.device == device), None)
    return None if check is None else check.allowance


def leak_line(result: CheckResult) -> str:
    """``cpu: 4.0 MiB over baseline (tolerance 1.0 MiB); held by ...`` for the top leak."""
    top = max(result.leaks, key=lambda f: f.nbytes)
    on_device = sum(f.nbytes for f in result.leaks if f.device == top.device)
    allowance = _allowance(result, top.device)
    tolerance = "" if allowance is None else f" (tolerance {format_bytes(allowance)})"
    more = len(result.leaks) - 1
    extra = f" [+{more} more finding{'s' if more > 1 else ''}]" if more else ""
    held = held_by(top)
    return (
        f"{top.device}: {format_bytes(on_device)} over baseline{tolerance}, "
        f"{top.kind.title}{'; ' + held if held else ''}{extra}"
    )


@dataclass(frozen=True)
class PeakViolation:
    phase: str
    device: str
    peak: int
    budget: int
    lower_bound: bool

    def describe(self) -> str:
        bound = (
            " (a lower bound from phase-end values: CPU tensors have no peak counter)"
            if self.lower_bound
            else ""
        )
        return (
            f"{self.device}: peak in phase {self.phase!r} was {format_bytes(self.peak)} over "
            f"baseline, above the max_peak budget of {format_bytes(self.budget)}{bound}"
        )


def _peak(reading: DeviceReading, baseline: DeviceReading) -> tuple[int, bool] | None:
    base = baseline.allocated or 0
    if reading.peak_allocated is not None:
        return reading.peak_allocated - base, False
    if reading.peak_reserved is not None and reading.reserved is not None:
        return reading.peak_reserved - (baseline.reserved or 0), False
    if reading.allocated is not None:
        return reading.allocated - base, True
    return None


def peak_violations(
    phases: Sequence[PhaseRecord], baseline: dict[str, DeviceReading], budget: int
) -> list[PeakViolation]:
    """Phases whose peak allocated memory rose more than ``budget`` above baseline."""
    out: list[PeakViolation] = []
    for record in phases:
        for reading in record.readings:
            base = baseline.get(reading.device)
            if base is None:
                continue
            peak = _peak(reading, base)
            if peak is not None and peak[0] > budget:
                out.append(PeakViolation(record.name, reading.device, peak[0], budget, peak[1]))
    return out


def render_report(result: CheckResult, *, width: int, verbosity: int) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False)
    render_terminal(result, console, verbosity=verbosity)
    return buffer.getvalue()


def build_failure(
    result: CheckResult | None,
    peaks: Sequence[PeakViolation],
    *,
    blame: str,
    width: int,
    verbosity: int,
) -> LeakFailure | None:
    """The failure for a leak and/or peak over budget, or ``None`` when both are fine.

    ``blame`` says what is checked ("the test", "module-scoped fixtures engine of ...").
    """
    leaked = result is not None and result.leaked
    if not leaked and not peaks:
        return None
    lines: list[str] = []
    if leaked:
        assert result is not None
        message = f"memdiag: {leak_line(result)} after {blame}"
        lines.append(message)
        for finding in result.leaks:
            lines.append(f"  LEAK [{finding.kind.title}] {finding.headline()}")
            for group in finding.retainers[: 3 if verbosity <= 0 else 20]:
                lines.append(f"    held by: {group.get('chain_text', '?')}")
    else:
        message = f"memdiag: {peaks[0].describe()}"
    for peak in peaks if leaked else peaks[1:]:
        lines.append(f"memdiag: {peak.describe()}")
    if peaks and not leaked:
        lines.insert(0, message)
    lines.append(f"(full report in the '{SECTION}' section below)")
    section = render_report(result, width=width, verbosity=verbosity) if result else ""
    return LeakFailure(message=message, long_repr="\n".join(lines), section=section)

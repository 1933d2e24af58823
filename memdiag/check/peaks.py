"""Peak budgets: a phase whose peak rose more than a budget above the baseline.

The "2x buffer resident during a resize" class of bug: memory that comes back, but
only after peaking too high.  Peaks come from the allocator's peak counters where a
backend has them; CPU tensors have none, so there the phase-end value stands in (a
lower bound, and said so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from memdiag.values.readings import DeviceReading
from memdiag.values.result import PhaseRecord
from memdiag.values.units import format_bytes

__all__ = ["PeakViolation", "peak_over_baseline", "peak_violations"]


@dataclass(frozen=True)
class PeakViolation:
    """One phase's peak on one device, over the budget."""

    phase: str
    device: str
    peak: int
    """Bytes over baseline at the phase's peak."""
    budget: int
    lower_bound: bool
    """No peak counter: ``peak`` is the phase-end value, a lower bound."""

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


def peak_over_baseline(reading: DeviceReading, baseline: DeviceReading) -> tuple[int, bool] | None:
    """``(bytes over baseline at the peak, lower_bound)``, or ``None`` without counters."""
    base = baseline.allocated or 0
    if reading.peak_allocated is not None:
        return reading.peak_allocated - base, False
    if reading.peak_reserved is not None and reading.reserved is not None:
        return reading.peak_reserved - (baseline.reserved or 0), False
    if reading.allocated is not None:
        return reading.allocated - base, True
    return None


def peak_violations(
    phases: Sequence[PhaseRecord], baseline: Mapping[str, DeviceReading], budget: int
) -> list[PeakViolation]:
    """Phases whose peak allocated memory rose more than ``budget`` above baseline."""
    out: list[PeakViolation] = []
    for record in phases:
        for reading in record.readings:
            base = baseline.get(reading.device)
            if base is None:
                continue
            peak = peak_over_baseline(reading, base)
            if peak is not None and peak[0] > budget:
                out.append(PeakViolation(record.name, reading.device, peak[0], budget, peak[1]))
    return out

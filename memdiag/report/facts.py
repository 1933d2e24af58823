"""What every renderer shows, computed once: ordered findings, retainer groups in
order, timeline points per device, leaked and peak bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memdiag.values.findings import Finding, FindingKind
from memdiag.values.holders import in_blame_order
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult
from memdiag.values.retainers import RetainerGroup, blame_order

__all__ = [
    "Point",
    "device_points",
    "groups_of",
    "kind_label",
    "leaked_bytes",
    "limit_for",
    "ordered_findings",
    "peak_bytes",
    "shown_count",
    "tolerance_for",
    "unrooted_groups",
]


def kind_label(kind: FindingKind) -> str:
    """The class of a finding in two or three words (:attr:`FindingKind.label`)."""
    return kind.label


def limit_for(verbosity: int) -> int | None:
    """How many items of a list to show: 3, 10 with ``-v``, all with ``-vv``."""
    return 3 if verbosity <= 0 else (10 if verbosity == 1 else None)


def shown_count(limit: int | None, sizes: Sequence[int], floor: int | None) -> int | None:
    """How many items of a biggest-first list to show: the verbosity ``limit``, raised
    to cover every item of more than ``floor`` bytes (the device's tolerance): an item
    that alone could fail the check is never hidden behind "-v shows more"."""
    if limit is None or floor is None:
        return limit
    return max(limit, sum(1 for size in sizes if size > floor))


def tolerance_for(result: CheckResult | None, device: str) -> int | None:
    """The tolerance ``result`` used on ``device`` (``None`` when it did not check it)."""
    if result is None:
        return None
    check = next((d for d in result.devices if d.device == device), None)
    return None if check is None else check.allowance


def ordered_findings(result: CheckResult) -> list[Finding]:
    """Leaks first, then notes; each biggest first (ties by device, then class)."""
    return sorted(result.findings, key=lambda f: (not f.is_leak, -f.nbytes, f.device, f.kind.value))


def groups_of(finding: Finding) -> list[RetainerGroup]:
    """The finding's retainer groups, most retained bytes first."""
    return in_blame_order(finding.retainers)


def unrooted_groups(result: CheckResult) -> list[RetainerGroup]:
    """Storages no Python root reaches, from the analysis section."""
    raw = result.analysis.get("unrooted")
    groups = [
        RetainerGroup.from_json(g)
        for g in (raw if isinstance(raw, list) else ())
        if isinstance(g, dict)
    ]
    return sorted(groups, key=blame_order)


@dataclass(frozen=True)
class Point:
    """One point of a device's memory timeline.

    ``kind`` is ``baseline``, ``peak`` (the highest values within ``phase``),
    ``end`` (the reading at the end of ``phase``) or ``final`` (the final check).
    Peaks come from the allocator's peak counters and are ``None`` where the source
    keeps none (CPU tensors, driver-only readings).
    """

    kind: str
    phase: str
    allocated: int | None
    reserved: int | None
    driver_used: int | None
    process_used: int | None

    @property
    def label(self) -> str:
        if self.kind in ("baseline", "final"):
            return "baseline" if self.kind == "baseline" else "final check"
        return f"{self.phase}: {self.kind}"


def _point(kind: str, phase: str, r: DeviceReading) -> Point:
    return Point(kind, phase, r.allocated, r.reserved, r.driver_used, r.process_used)


def device_points(result: CheckResult, device: str) -> list[Point]:
    """Baseline, then per phase its peak (when known) and its end, then the final check."""
    check = next((d for d in result.devices if d.device == device), None)
    points: list[Point] = []
    if check is not None:
        points.append(_point("baseline", "", check.baseline))
    for record in result.phases:
        reading = record.reading(device)
        if reading is None:
            continue
        if reading.peak_allocated is not None or reading.peak_reserved is not None:
            points.append(
                Point(
                    "peak", record.name, reading.peak_allocated, reading.peak_reserved, None, None
                )
            )
        points.append(_point("end", record.name, reading))
    if check is not None:
        points.append(_point("final", "", check.final))
    return points


def peak_bytes(result: CheckResult, device: str) -> int | None:
    """Highest allocated bytes seen on ``device``: phase peaks, else phase-end readings."""
    values = [p.allocated for p in device_points(result, device) if p.allocated is not None]
    return max(values) if values else None


def leaked_bytes(result: CheckResult, device: str) -> int:
    """Bytes of ``device``'s findings that the run called leaks (over its tolerance)."""
    return sum(f.nbytes for f in result.findings if f.device == device and f.is_leak)

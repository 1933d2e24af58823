"""What every renderer shows, computed once: ordered findings, retainer groups read
defensively from their JSON form, timeline points per device, leaked and peak bytes.

Retainer groups reach a finding as plain dicts (``RetainerGroup.to_json()``); this
module reads them with ``.get`` so that a report written by an older or newer
memdiag still renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memdiag.values.findings import Finding, FindingKind
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult
from memdiag.values.units import plural

__all__ = [
    "GroupView",
    "Hop",
    "Point",
    "device_points",
    "groups_of",
    "kind_label",
    "leaked_bytes",
    "limit_for",
    "ordered_findings",
    "peak_bytes",
    "unrooted_groups",
]


def kind_label(kind: FindingKind) -> str:
    """The class of a finding in two or three words (:attr:`FindingKind.label`)."""
    return kind.label


def limit_for(verbosity: int) -> int | None:
    """How many items of a list to show: 3, 10 with ``-v``, all with ``-vv``."""
    return 3 if verbosity <= 0 else (10 if verbosity == 1 else None)


def ordered_findings(result: CheckResult) -> list[Finding]:
    """Leaks first, then notes; each biggest first (ties by device, then class)."""
    return sorted(result.findings, key=lambda f: (not f.is_leak, -f.nbytes, f.device, f.kind.value))


@dataclass(frozen=True)
class Hop:
    """One edge of an example chain: how it is referred to, and what it reaches."""

    label: str
    type_name: str
    node: str

    def text(self) -> str:
        what = self.node or self.type_name.rsplit(".", 1)[-1]
        return f"{self.label} -> {what}" if self.label else what


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _str(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class GroupView:
    """A retainer group as renderers need it, read from its JSON dict."""

    root_kind: str
    root_name: str
    retained_bytes: int
    tensor_count: int
    storage_count: int
    chain_text: str
    hops: tuple[Hop, ...]
    suspect_index: int | None
    alloc_site: str
    known: str
    note: str
    frozen: bool
    signature: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupView:
        chain = data.get("chain") or ()
        hops = tuple(
            Hop(_str(e.get("label")), _str(e.get("type_name")), _str(e.get("node")))
            for e in chain
            if isinstance(e, dict)
        )
        suspect = data.get("suspect_index")
        root = _str(data.get("root_name")) or "?"
        return cls(
            root_kind=_str(data.get("root_kind")) or "unknown",
            root_name=root,
            retained_bytes=_int(data.get("retained_bytes")),
            tensor_count=_int(data.get("tensor_count")),
            storage_count=_int(data.get("storage_count")),
            chain_text=_str(data.get("chain_text")) or root,
            hops=hops,
            suspect_index=suspect
            if isinstance(suspect, int) and 0 <= suspect < len(hops)
            else None,
            alloc_site=_str(data.get("alloc_site")),
            known=_str(data.get("known")),
            note=_str(data.get("note")),
            frozen=bool(data.get("frozen", False)),
            signature=_str(data.get("signature")),
        )

    @property
    def suspect_text(self) -> str:
        """The reference to cut, ``cache key -> bound method Model.forward``; ``""`` when
        unknown or when it is the chain's last hop (the chain already says it)."""
        if self.suspect_index is None or self.suspect_index == len(self.hops) - 1:
            return ""
        hop = self.hops[self.suspect_index]
        before = self.hops[self.suspect_index - 1] if self.suspect_index else None
        source = (before.node or before.label or before.type_name) if before else self.root_name
        return f"{source} -> {hop.text()}"

    @property
    def suspect_hop(self) -> str:
        """Just the suspect reference, ``cache key -> bound method Model.forward``."""
        if self.suspect_index is None or self.suspect_index == len(self.hops) - 1:
            return ""
        return self.hops[self.suspect_index].text()

    def counts_text(self) -> str:
        tensors = plural(self.tensor_count, "tensor")
        if self.storage_count and self.storage_count != self.tensor_count:
            tensors += f", {plural(self.storage_count, 'storage')}"
        return tensors


def groups_of(finding: Finding) -> list[GroupView]:
    """The finding's retainer groups, most retained bytes first."""
    groups = [GroupView.from_json(g) for g in finding.retainers if isinstance(g, dict)]
    return sorted(groups, key=lambda g: (-g.retained_bytes, g.root_name))


def unrooted_groups(result: CheckResult) -> list[GroupView]:
    """Storages no Python root reaches, from the analysis section."""
    raw = result.analysis.get("unrooted") or ()
    groups = [GroupView.from_json(g) for g in raw if isinstance(g, dict)]
    return sorted(groups, key=lambda g: (-g.retained_bytes, g.root_name))


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

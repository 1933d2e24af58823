"""The outcome of a check: per-device numbers, phases, findings.  JSON-safe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memdiag.values.findings import Finding
from memdiag.values.holders import held_text
from memdiag.values.readings import DeviceReading
from memdiag.values.units import format_bytes, plural

__all__ = ["SCHEMA_VERSION", "CheckResult", "DeviceCheck", "PhaseRecord"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PhaseRecord:
    """One phase: the readings at its end; their ``peak_*`` fields are the phase's peaks."""

    name: str
    started: float
    ended: float
    readings: tuple[DeviceReading, ...]

    def reading(self, device: str) -> DeviceReading | None:
        return next((r for r in self.readings if r.device == device), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "started": self.started,
            "ended": self.ended,
            "readings": [r.to_json() for r in self.readings],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhaseRecord:
        return cls(
            name=data["name"],
            started=float(data["started"]),
            ended=float(data["ended"]),
            readings=tuple(DeviceReading.from_json(r) for r in data["readings"]),
        )


_GROWTH_FIELDS = (
    ("allocated", "allocated", True),
    ("process_used", "used by this process", False),
    ("driver_used", "used on the device", False),
)
"""Reading fields a clean verdict is stated in, first known wins: (field, words,
held to the allocator tolerance (else the driver's))."""


@dataclass(frozen=True)
class DeviceCheck:
    """Baseline and final reading of one device, and the tolerance it was held to."""

    device: str
    baseline: DeviceReading
    final: DeviceReading
    allowance: int
    driver_allowance: int

    @property
    def growth(self) -> int | None:
        if self.final.allocated is None or self.baseline.allocated is None:
            return None
        return self.final.allocated - self.baseline.allocated

    def within_text(self) -> str:
        """``cpu +3.9 KiB allocated since baseline (tolerance 1.0 MiB)``: the growth the
        verdict held to the tolerance (driver counters where torch's are unknown)."""
        for name, what, allowance in _GROWTH_FIELDS:
            before, after = getattr(self.baseline, name), getattr(self.final, name)
            if before is not None and after is not None:
                grown = format_bytes(after - before, signed=True)
                limit = format_bytes(self.allowance if allowance else self.driver_allowance)
                return f"{self.device} {grown} {what} since baseline (tolerance {limit})"
        if self.final.extra.get("gated"):
            return (
                f"{self.device} (host memory counters within the tolerance, "
                f"{format_bytes(self.allowance)}, since baseline: no heap walk needed)"
            )
        return self.device

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "baseline": self.baseline.to_json(),
            "final": self.final.to_json(),
            "allowance": self.allowance,
            "driver_allowance": self.driver_allowance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceCheck:
        return cls(
            device=data["device"],
            baseline=DeviceReading.from_json(data["baseline"]),
            final=DeviceReading.from_json(data["final"]),
            allowance=int(data["allowance"]),
            driver_allowance=int(data["driver_allowance"]),
        )


@dataclass(frozen=True)
class CheckResult:
    """What the final check saw.  ``leaked`` is the verdict.

    ``cheap`` says the counters were back within tolerance at the first reading (no
    gc, no settle, no heap walk); ``settle_s`` is how long memory took to come back
    (``None`` when it did not come back within the settle time).
    """

    leaked: bool
    devices: tuple[DeviceCheck, ...]
    phases: tuple[PhaseRecord, ...]
    findings: tuple[Finding, ...]
    cheap: bool
    settle_s: float | None
    elapsed_s: float
    notices: tuple[str, ...] = ()
    analysis: dict[str, Any] = field(default_factory=dict)

    @property
    def leaks(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.is_leak)

    def summary(self) -> str:
        """One line: the verdict with its numbers, then the top culprit."""
        if not self.leaked:
            # Say what is true: within tolerance (memory may have grown, by less than
            # the tolerance), with the numbers, and how long a settle took.
            numbers = "; ".join(d.within_text() for d in self.devices) or "no device"
            if not self.cheap and self.settle_s is not None:
                return (
                    f"memory back within tolerance after settling {self.settle_s:.2f} s: {numbers}"
                )
            return f"memory within tolerance: {numbers}"
        if not self.leaks:  # a hand-edited report: "leaked" without a leak finding
            return "leaked, but the report lists no leak finding"
        top = max(self.leaks, key=lambda f: f.nbytes)
        total = sum(f.nbytes for f in self.leaks)
        # Process groups and CPU workers carry no device bytes: say what leaked instead.
        amount = f"{format_bytes(total)} leaked" if total else plural(len(self.leaks), "leak")
        held = held_text(top.retainers, top.nbytes)
        if held:
            return (
                f"{amount}; top: {format_bytes(top.nbytes)} of {top.kind.heading} on "
                f"{top.device}, {held}"
            )
        return f"{amount}; top: {top.headline()}"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "leaked": self.leaked,
            "cheap": self.cheap,
            "settle_s": self.settle_s,
            "elapsed_s": self.elapsed_s,
            "summary": self.summary(),
            "devices": [d.to_json() for d in self.devices],
            "phases": [p.to_json() for p in self.phases],
            "findings": [f.to_json() for f in self.findings],
            "notices": list(self.notices),
            "analysis": dict(self.analysis),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckResult:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"report schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        return cls(
            leaked=bool(data["leaked"]),
            devices=tuple(DeviceCheck.from_json(d) for d in data["devices"]),
            phases=tuple(PhaseRecord.from_json(p) for p in data["phases"]),
            findings=tuple(Finding.from_json(f) for f in data["findings"]),
            cheap=bool(data["cheap"]),
            settle_s=data.get("settle_s"),
            elapsed_s=float(data["elapsed_s"]),
            notices=tuple(data.get("notices", ())),
            analysis=dict(data.get("analysis", {})),
        )

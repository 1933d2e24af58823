"""Every byte the driver charges this process, in named buckets.

NVML (or amdsmi) charges a process for its whole device footprint; torch's counters
explain only what its caching allocator reserved.  :func:`account` splits the
driver's figure for one device: torch's live tensors and cache (its counters), then
what lies outside torch in the holders :func:`~memdiag.backends.outside.outside_holders`
names (device context, cuBLAS/cuDNN handles, NCCL communicators, cuMem allocators,
other libraries), measured holders before estimated ones, each taking at most what
is left; the rest is "not named".  :func:`framework_growth` says how much of the
growth outside PyTorch since the baseline the framework's own holders (context,
cuBLAS/cuDNN) explain: those are reported, never called leaks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memdiag.backends.calibrate import failure
from memdiag.backends.outside import Bucket, Holder, outside_holders
from memdiag.values.readings import DeviceReading
from memdiag.values.units import format_bytes

__all__ = ["Accounting", "Bucket", "account", "account_devices", "framework_growth"]

_ORDER = ("context", "cumem", "library", "nccl", "blas", "dnn", "nccl_kept")
"""Measured holders first, then estimated ones: an estimate takes only what is left."""


@dataclass(frozen=True)
class Accounting:
    """The driver's figure for this process on one device, split into buckets."""

    device: str
    total: int
    """Bytes the driver charges this process (not its children) on the device."""
    buckets: tuple[Bucket, ...]
    unnamed: int
    """Bytes no bucket explains."""
    notes: tuple[str, ...] = ()

    @property
    def named(self) -> int:
        return self.total - self.unnamed

    @property
    def fraction(self) -> float:
        """Share of :attr:`total` in named buckets (1.0 when nothing is charged)."""
        return 1.0 if self.total <= 0 else self.named / self.total

    @property
    def outside(self) -> tuple[Bucket, ...]:
        """The buckets outside torch's allocator."""
        return tuple(b for b in self.buckets if b.outside_torch)

    def of_kind(self, kind: str) -> tuple[Bucket, ...]:
        return tuple(b for b in self.buckets if b.kind == kind)

    def describe_outside(self) -> str:
        """``CUDA context 610.0 MiB (measured), …, not named 4.0 MiB``."""
        parts = [b.describe() for b in self.outside]
        if self.unnamed:
            parts.append(f"not named {format_bytes(self.unnamed)}")
        return ", ".join(parts) or "nothing"

    def describe(self) -> str:
        buckets = ", ".join(b.describe() for b in self.buckets) or "no bucket"
        share = f"{self.fraction * 100:.1f}%"
        return (
            f"{format_bytes(self.total)} charged by the driver: {buckets}; "
            f"not named {format_bytes(self.unnamed)} ({share} named)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "bytes": self.total,
            "named": self.named,
            "unnamed": self.unnamed,
            "fraction_named": round(self.fraction, 4),
            "buckets": [b.to_json() for b in self.buckets],
            "notes": list(self.notes),
        }


def account(reading: DeviceReading, holders: Sequence[Holder]) -> Accounting | None:
    """Split the driver's per-process figure of ``reading`` into buckets; ``None``
    where the driver gives no per-process figure or torch gives no counters."""
    own = reading.extra.get("own_used", reading.process_used)
    if own is None or reading.reserved is None:
        return None
    total = int(own)
    unbacked = sum(h.nbytes for h in holders if h.kind == "unbacked")
    reserved = max(0, reading.reserved - unbacked)
    allocated = min(reading.allocated or 0, reserved)
    notes: list[str] = []
    if reserved > total:
        notes.append(
            f"torch counts {format_bytes(reserved - total)} more reserved than the driver "
            "charges (memory released behind torch's back, as a sleeping cuMem pool)"
        )
    left = total
    buckets: list[Bucket] = []
    for name, nbytes in (
        ("torch: live tensors (allocated)", allocated),
        ("torch: allocator cache (reserved, not allocated)", reserved - allocated),
    ):
        take = min(left, nbytes)
        if take > 0:
            buckets.append(Bucket("torch", name, take, True, "torch's allocator counters"))
            left -= take
    for holder in sorted(
        (h for h in holders if h.kind in _ORDER), key=lambda h: _ORDER.index(h.kind)
    ):
        take = min(left, holder.nbytes)
        if take <= 0:
            continue
        if take < holder.nbytes and not holder.measured:
            detail = f"{holder.detail}; {format_bytes(holder.nbytes)} expected, only this is left"
        else:
            detail = holder.detail
        buckets.append(Bucket(holder.kind, holder.name, take, holder.measured, detail))
        left -= take
    for holder in holders:
        if holder.kind == "nccl" and holder.nbytes == 0:
            notes.append(f"{holder.name}: its size is unknown here")
    return Accounting(reading.device, total, tuple(buckets), left, tuple(notes))


def framework_growth(accounting: Accounting, growth: int, *, before: int) -> int:
    """How much of ``growth`` (bytes outside PyTorch since the baseline) the framework's
    own holders explain: their size now, less what the ``before`` bytes outside
    PyTorch at baseline (or the context's floor) already held."""
    now = sum(b.nbytes for b in accounting.outside if b.framework)
    return max(0, min(growth, now - min(max(0, before), now)))


HolderSource = Callable[[str, DeviceReading], Sequence[Holder]]


def account_devices(
    readings: Mapping[str, DeviceReading],
    devices: Sequence[str],
    *,
    holders: HolderSource = outside_holders,
) -> dict[str, Accounting]:
    """:func:`account` for each of ``devices`` that has a per-process driver figure."""
    out: dict[str, Accounting] = {}
    for device in devices:
        reading = readings.get(device)
        if reading is None or reading.extra.get("own_used", reading.process_used) is None:
            continue
        found = account(reading, holders(device, reading))
        if found is None:
            continue
        why = failure(int(device.partition(":")[2] or 0)) if device.startswith("cuda:") else None
        if why and not found.of_kind("context"):
            found = dataclasses.replace(
                found, notes=(*found.notes, f"the context's size could not be measured: {why}")
            )
        out[device] = found
    return out

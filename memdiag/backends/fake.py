"""Scripted readings for tests: several devices, leaks, and lazy release.

Each device has a current usage that tests change with :meth:`FakeBackend.set`,
and may have a pending release: memory that goes away only ``delay`` seconds after
it was scheduled, the way ROCm returns VRAM lazily after shutdown or process exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from memdiag.backends.base import Availability, BackendUnavailable
from memdiag.values.readings import DeviceReading, ProcessUsage

__all__ = ["FakeBackend", "FakeDevice"]


@dataclass
class FakeDevice:
    allocated: int = 0
    reserved: int = 0
    driver_used: int = 0
    total: int = 80 * 1024**3
    process_used: int | None = None
    processes: tuple[ProcessUsage, ...] = ()
    peak_allocated: int = 0
    pending: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time when it is released, bytes) for lazily released memory."""
    private_pools: dict[str, list[int]] = field(default_factory=dict)
    """``"a,b"`` -> [reserved, allocated] of private pools (part of ``reserved``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What a real backend adds to a reading's ``extra`` (``uuid``, ``own_used``…)."""


class FakeBackend:
    """A backend whose numbers are whatever the test says."""

    name = "fake"

    def __init__(
        self,
        devices: Iterable[str] = ("fake:0",),
        *,
        unavailable: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        stands_for: tuple[str, ...] = (),
    ) -> None:
        self._devices = {name: FakeDevice() for name in devices}
        self._sources = (self.name, *stands_for)
        """``stands_for``: the sources its readings claim besides ``fake`` (``nvml``)."""
        self._unavailable = unavailable
        self._clock = clock
        self.reads = 0
        self.settles = 0

    def probe(self) -> Availability:
        if self._unavailable:
            return Availability.no(self._unavailable)
        return Availability.yes()

    def devices(self) -> tuple[str, ...]:
        if self._unavailable:
            raise BackendUnavailable(self._unavailable)
        return tuple(self._devices)

    def set(
        self, device: str, **values: int | tuple[ProcessUsage, ...] | dict[str, Any] | None
    ) -> None:
        state = self._devices[device]
        for key, value in values.items():
            setattr(state, key, value)
        if state.allocated > state.peak_allocated:
            state.peak_allocated = state.allocated

    def allocate(self, device: str, nbytes: int) -> None:
        state = self._devices[device]
        self.set(
            device,
            allocated=state.allocated + nbytes,
            reserved=max(state.reserved, state.allocated + nbytes),
            driver_used=state.driver_used + nbytes,
        )

    def release_later(self, device: str, nbytes: int, delay: float) -> None:
        """Free ``nbytes`` of allocated memory ``delay`` seconds from now."""
        self._devices[device].pending.append((self._clock() + delay, nbytes))

    def _apply_pending(self, state: FakeDevice) -> None:
        now = self._clock()
        due = [p for p in state.pending if p[0] <= now]
        for item in due:
            state.pending.remove(item)
            state.allocated -= item[1]
            state.reserved -= item[1]
            state.driver_used -= item[1]

    def read(self, device: str) -> DeviceReading:
        if device not in self._devices:
            raise BackendUnavailable(f"fake backend has no device {device!r}")
        self.reads += 1
        state = self._devices[device]
        self._apply_pending(state)
        return DeviceReading(
            device=device,
            sources=self._sources,
            allocated=state.allocated,
            reserved=state.reserved,
            active=state.allocated,
            peak_allocated=state.peak_allocated,
            peak_reserved=state.reserved,
            driver_used=state.driver_used,
            total=state.total,
            process_used=state.process_used,
            processes=state.processes,
            time=self._clock(),
            extra=dict(state.extra),
        )

    def recheck(self, device: str, reading: DeviceReading) -> dict[str, int | None] | None:
        """``None`` when what :meth:`read` would give now differs from ``reading`` (its
        time and peaks aside), else the peaks it would give."""
        state = self._devices.get(device)
        if state is None:
            return None
        self._apply_pending(state)
        if state.private_pools:
            return None  # a scripted pool may change at equal totals: read it again
        same = (
            state.allocated,
            state.reserved,
            state.driver_used,
            state.process_used,
            state.processes,
            dict(state.extra),
        ) == (
            reading.allocated,
            reading.reserved,
            reading.driver_used,
            reading.process_used,
            reading.processes,
            {k: v for k, v in reading.extra.items() if k != "pools"},
        )
        if not same:
            return None
        return {"peak_allocated": state.peak_allocated, "peak_reserved": state.reserved}

    def set_pool(self, device: str, pool: tuple[int, int], reserved: int, allocated: int) -> None:
        """Script a private pool (CUDA graph, MemPool) of ``reserved`` bytes; ``0`` drops it."""
        pools = self._devices[device].private_pools
        name = f"{pool[0]},{pool[1]}"
        if reserved:
            pools[name] = [reserved, allocated]
        else:
            pools.pop(name, None)

    def pools(self, device: str) -> dict[str, object]:
        """The allocator's split by pool, as :meth:`TorchBackend.pools` gives it: every
        cached byte outside the private pools can be returned."""
        state = self._devices[device]
        private = {k: list(v) for k, v in state.private_pools.items()}
        held = sum(r - a for r, a in private.values())
        return {"returnable": max(0, state.reserved - state.allocated - held), "private": private}

    def reset_peak(self, device: str) -> None:
        state = self._devices[device]
        state.peak_allocated = state.allocated

    def settle(self, device: str, *, baseline: bool = False) -> None:
        self.settles += 1

    def close(self) -> None:
        return None

    def snapshot(self, device: str) -> FakeDevice:
        return replace(self._devices[device], pending=list(self._devices[device].pending))

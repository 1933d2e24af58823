"""What a backend reads off one device at one moment: plain, frozen, JSON-safe data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HOST_PINNED", "DeviceReading", "ProcessUsage", "pool_key", "pool_of_key"]

HOST_PINNED = "host-pinned"
"""The device name of pinned (page-locked) host memory on CUDA/ROCm builds."""


def pool_key(pool: tuple[int, int]) -> int:
    """A private pool id as a (negative) retainer-target key, apart from storage keys."""
    return -(1 + (int(pool[0]) << 32) + int(pool[1]))


def pool_of_key(key: int) -> tuple[int, int] | None:
    """The pool id :func:`pool_key` encoded, or ``None`` for a storage key."""
    if key >= 0:
        return None
    value = -key - 1
    return value >> 32, value & 0xFFFFFFFF


@dataclass(frozen=True)
class ProcessUsage:
    """Device memory the driver charges to one process (NVML / amdsmi)."""

    pid: int
    used: int
    name: str = ""


@dataclass(frozen=True)
class DeviceReading:
    """Memory of one device, in bytes; ``None`` where the source cannot tell.

    - ``allocated``: bytes of live tensors (torch allocator), or for ``cpu`` the bytes
      of distinct live CPU tensor storages.
    - ``reserved``: bytes the caching allocator holds (allocated + cache).
    - ``active``: allocator blocks in use (may exceed ``allocated`` by rounding).
    - ``peak_allocated`` / ``peak_reserved``: highest values since the last peak reset.
    - ``driver_used`` / ``total``: device-wide, as the driver sees it.
    - ``process_used``: what the driver charges to this process and its descendants
      (NVML / amdsmi); ``extra["own_used"]`` is this process alone.
    - ``processes``: per-process usage of every process on the device the source saw.
    """

    device: str
    sources: tuple[str, ...] = ()
    allocated: int | None = None
    reserved: int | None = None
    active: int | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    driver_used: int | None = None
    total: int | None = None
    process_used: int | None = None
    processes: tuple[ProcessUsage, ...] = ()
    time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def merged(self, other: DeviceReading) -> DeviceReading:
        """Fill this reading's unknown fields from ``other`` (same device, other source)."""
        mine = self.__dict__
        theirs = other.__dict__
        # Built directly (no dataclasses.replace): every check merges its readings.
        return DeviceReading(
            device=self.device,
            sources=self.sources + tuple(s for s in other.sources if s not in self.sources),
            processes=self.processes or other.processes,
            time=max(self.time, other.time),
            extra={**other.extra, **self.extra},
            **{
                name: theirs[name] if mine[name] is None else mine[name]
                for name in _FILLED_BY_MERGE
            },
        )

    def with_values(self, **changes: Any) -> DeviceReading:
        """A copy with ``changes`` (field names, unchecked): ``dataclasses.replace``
        without its per-field work, for the readings every passing check copies."""
        copy = object.__new__(DeviceReading)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        return copy

    @property
    def outside_torch(self) -> int | None:
        """Driver-charged memory of this process (not its children, which are counted
        as other processes) that the torch allocator does not hold."""
        own = self.extra.get("own_used", self.process_used)
        if own is None or self.reserved is None:
            return None
        return max(0, int(own) - self.reserved)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sources"] = list(self.sources)
        data["processes"] = [dataclasses.asdict(p) for p in self.processes]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceReading:
        values = dict(data)
        values["sources"] = tuple(values.get("sources", ()))
        values["processes"] = tuple(ProcessUsage(**p) for p in values.get("processes", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


_FILLED_BY_MERGE = tuple(
    f.name
    for f in dataclasses.fields(DeviceReading)
    if f.name not in ("device", "sources", "processes", "time", "extra")
)
"""The fields :meth:`DeviceReading.merged` takes from the other reading where unknown."""

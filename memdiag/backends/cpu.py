"""The embedded default without an accelerator: a census of live torch CPU tensors.

There is no allocator counter for CPU tensors, so each reading walks the heap once
(``gc.get_objects()``) and sums the bytes of distinct CPU storages, views counted
once.  Objects frozen by ``gc.freeze()`` are not in that walk; the tracker checks the
freeze count separately and takes a full census when it changed.
"""

from __future__ import annotations

import sys
import time

from memdiag.backends.base import Availability, BackendUnavailable
from memdiag.heap.census import live_cpu_bytes
from memdiag.values.readings import DeviceReading

__all__ = ["CpuBackend"]


class CpuBackend:
    name = "cpu"

    def probe(self) -> Availability:
        if sys.modules.get("torch") is not None:
            return Availability.yes()
        try:
            import torch  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return Availability.no(f"torch cannot be imported ({type(exc).__name__}: {exc})")
        return Availability.yes()

    def devices(self) -> tuple[str, ...]:
        return ("cpu",)

    def read(self, device: str) -> DeviceReading:
        if device != "cpu":
            raise BackendUnavailable(f"cpu backend has no device {device!r}")
        allocated = live_cpu_bytes()
        return DeviceReading(
            device="cpu",
            sources=(self.name,),
            allocated=allocated,
            time=time.monotonic(),
        )

    def reset_peak(self, device: str) -> None:
        return None

    def settle(self, device: str, *, baseline: bool = False) -> None:
        return None

    def close(self) -> None:
        return None

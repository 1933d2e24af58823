"""Accelerator memory through torch's caching allocator (CUDA, ROCm, XPU...).

Reads allocator counters only: ``allocated`` (live tensors), ``reserved`` (allocated
plus the allocator's cache), ``active`` and the peaks; and, for a device whose
context exists, the device-wide ``driver_used``/``total`` from ``mem_get_info``.
It never creates a device context: a device the program has not initialised reads
as zero, and ``mem_get_info`` (which would create one) is called only for devices
the allocator already uses.

On CUDA and ROCm builds it also reads ``host-pinned``: page-locked host memory of
torch's pinned-memory allocator (``torch.cuda.host_memory_stats()``), a device of
its own because a pinned staging buffer that is never freed leaks host memory no
accelerator counter shows.  :meth:`TorchBackend.pools` splits a device's reserved
memory by allocator pool (``memory_snapshot()`` segments): what ``empty_cache()``
can return, and what private pools (CUDA graphs, ``MemPool``) hold.
"""

from __future__ import annotations

import sys
import time
from types import ModuleType
from typing import Any

from memdiag.backends.base import Availability, BackendUnavailable
from memdiag.backends.outside import note_nccl
from memdiag.values.readings import HOST_PINNED, DeviceReading, pool_key, pool_of_key

__all__ = ["HOST_PINNED", "TorchBackend", "pool_key", "pool_of_key"]


def _torch() -> ModuleType:
    import torch

    return torch


class TorchBackend:
    """Every accelerator torch can see, through ``torch.accelerator`` where it exists."""

    name = "torch"

    def __init__(self) -> None:
        self._kind: str | None = None
        self._count = 0
        self._pools_seen: dict[int, tuple[tuple[int, ...], dict[str, Any]]] = {}
        """Device index -> (allocator counters, pools) of the last ``memory_snapshot()``."""
        self.device_wide = True
        """Read device-wide used/total (``mem_get_info``); the registry turns it off
        when NVML or amdsmi gives them, to keep the passing path short."""

    def probe(self) -> Availability:
        try:
            torch = _torch()
        except Exception as exc:  # noqa: BLE001 - a broken install must not crash us
            return Availability.no(f"torch cannot be imported ({type(exc).__name__}: {exc})")
        try:
            kind, count = _accelerator(torch)
        except Exception as exc:  # noqa: BLE001
            return Availability.no(f"torch could not query accelerators: {exc}")
        if not kind or not count:
            return Availability.no("torch sees no accelerator (CPU-only build or no GPU visible)")
        self._kind, self._count = kind, count
        return Availability.yes()

    def devices(self) -> tuple[str, ...]:
        if self._kind is None:
            availability = self.probe()
            if not availability.available:
                raise BackendUnavailable(availability.reason)
        devices = tuple(f"{self._kind}:{i}" for i in range(self._count))
        return (*devices, HOST_PINNED) if self._kind == "cuda" else devices

    def _module(self) -> Any:
        torch = _torch()
        return getattr(torch, self._kind or "cuda")

    def _index(self, device: str) -> int:
        kind, _, index = device.partition(":")
        if kind != self._kind or not index.isdigit() or int(index) >= self._count:
            raise BackendUnavailable(f"torch backend has no device {device!r}")
        return int(index)

    def initialized(self) -> bool:
        module = self._module()
        is_init = getattr(module, "is_initialized", None)
        return bool(is_init()) if callable(is_init) else True

    def read(self, device: str) -> DeviceReading:
        if device == HOST_PINNED:
            return self._read_pinned()
        index = self._index(device)
        now = time.monotonic()
        note_nccl()  # NCCL keeps memory after its groups die: remember it was used
        if not self.initialized():
            return DeviceReading(
                device=device,
                sources=(self.name,),
                allocated=0,
                reserved=0,
                active=0,
                peak_allocated=0,
                peak_reserved=0,
                time=now,
                extra={"initialized": False},
            )
        try:
            stats = self._stats(index)
        except Exception as exc:
            raise BackendUnavailable(f"{device}: torch memory_stats failed: {exc}") from exc
        reserved = int(stats.get("reserved_bytes.all.current", 0))
        driver_used = total = None
        if reserved and self.device_wide:
            try:
                free, total = self._module().mem_get_info(index)
                driver_used = int(total - free)
            except Exception:  # noqa: BLE001 - device-wide numbers are optional
                pass
        return DeviceReading(
            device=device,
            sources=(self.name,),
            allocated=int(stats.get("allocated_bytes.all.current", 0)),
            reserved=reserved,
            active=int(stats.get("active_bytes.all.current", 0)),
            peak_allocated=int(stats.get("allocated_bytes.all.peak", 0)),
            peak_reserved=int(stats.get("reserved_bytes.all.peak", 0)),
            driver_used=driver_used,
            total=int(total) if total is not None else None,
            time=now,
            extra={"initialized": True},
        )

    def _stats(self, index: int) -> dict[str, int]:
        """The allocator counters we read, as ``memory_stats`` names them.

        ``torch.cuda.memory_stats`` flattens ~100 nested entries in Python on every
        call; the check reads five, so on CUDA the nested C++ dict is read directly."""
        raw = getattr(getattr(sys.modules.get("torch"), "_C", None), "_cuda_memoryStats", None)
        if self._kind == "cuda" and callable(raw):
            nested = raw(index)
            return {
                f"{name}.all.{which}": int(nested[name]["all"][which])
                for name in ("allocated_bytes", "reserved_bytes", "active_bytes")
                for which in ("current", "peak")
            }
        return dict(self._module().memory_stats(index))

    def _read_pinned(self) -> DeviceReading:
        now = time.monotonic()
        if self._kind != "cuda":
            raise BackendUnavailable(f"torch backend has no device {HOST_PINNED!r}")
        if not self.initialized():
            return DeviceReading(device=HOST_PINNED, sources=(self.name,), allocated=0, time=now)
        stats_fn = getattr(self._module(), "host_memory_stats", None)
        if not callable(stats_fn):
            raise BackendUnavailable("this torch has no torch.cuda.host_memory_stats()")
        try:
            stats = stats_fn()
        except Exception as exc:
            raise BackendUnavailable(f"torch.cuda.host_memory_stats() failed: {exc}") from exc
        return DeviceReading(
            device=HOST_PINNED,
            sources=(self.name,),
            allocated=int(stats.get("allocated_bytes.current", 0)),
            peak_allocated=int(stats.get("allocated_bytes.peak", 0)) or None,
            time=now,
            extra={"initialized": True},
        )

    def pools(self, device: str) -> dict[str, Any] | None:
        """Reserved memory of ``device`` by allocator pool, from ``memory_snapshot()``.

        ``returnable``: bytes of default-pool segments with nothing allocated (what
        ``empty_cache()`` releases); ``private``: ``"a,b"`` -> ``[reserved,
        allocated]`` for every private pool (CUDA graphs, ``MemPool``,
        torch.compile's CUDA graph trees).  ``None`` where the build cannot tell.
        """
        if device == HOST_PINNED or self._kind != "cuda" or not self.initialized():
            return None
        index = self._index(device)
        key = self._pools_key(index)
        seen = self._pools_seen.get(index)
        if key is not None and seen is not None and seen[0] == key:
            return _copy_pools(seen[1])
        try:
            segments = self._module().memory_snapshot()
        except Exception:  # noqa: BLE001 - pools are a refinement; the counters stand
            return None
        returnable = 0
        private: dict[str, list[int]] = {}
        for segment in segments:
            if segment.get("device") != index:
                continue
            pool = tuple(segment.get("segment_pool_id") or (0, 0))
            total = int(segment.get("total_size", 0))
            allocated = int(segment.get("allocated_size", 0))
            if pool == (0, 0):
                if allocated == 0 and int(segment.get("active_size", 0)) == 0:
                    returnable += total
                continue
            entry = private.setdefault(f"{pool[0]},{pool[1]}", [0, 0])
            entry[0] += total
            entry[1] += allocated
        pools = {"returnable": returnable, "private": private}
        if key is not None:
            self._pools_seen[index] = (key, _copy_pools(pools))
        return pools

    def _pools_key(self, index: int) -> tuple[int, ...] | None:
        """Counters that move whenever the pool split can: blocks allocated and freed,
        segments allocated and freed, active bytes.  Equal counters, equal split: the
        snapshot (0.24 ms on an H200, more with many segments) is not taken again, so
        the baseline of a test reuses the previous check's."""
        raw = getattr(getattr(sys.modules.get("torch"), "_C", None), "_cuda_memoryStats", None)
        if not callable(raw):
            return None
        try:
            nested = raw(index)
            return tuple(
                int(nested[name]["all"][which])
                for name, which in (
                    ("allocation", "allocated"),
                    ("allocation", "freed"),
                    ("segment", "allocated"),
                    ("segment", "freed"),
                    ("active_bytes", "current"),
                    ("reserved_bytes", "current"),
                )
            )
        except Exception:  # noqa: BLE001 - no key: take the snapshot every time
            return None

    def reset_peak(self, device: str) -> None:
        if device == HOST_PINNED:
            reset = getattr(self._module(), "reset_peak_host_memory_stats", None)
            if callable(reset) and self.initialized():
                reset()
            return
        index = self._index(device)
        if self.initialized():
            self._module().reset_peak_memory_stats(index)

    def settle(self, device: str) -> None:
        """Synchronise the device and free cuBLAS/cuBLASLt workspaces torch keeps;
        for ``host-pinned``, release the pinned blocks the host allocator caches."""
        if device == HOST_PINNED:
            empty = getattr(getattr(sys.modules.get("torch"), "_C", None), "_host_emptyCache", None)
            if callable(empty) and self.initialized():
                empty()
            return
        index = self._index(device)
        if not self.initialized():
            return
        module = self._module()
        # Synchronising a device switches to it and would create a context (hundreds
        # of MiB) on a GPU the program never used: only touch devices the allocator uses.
        if self._stats(index).get("reserved_bytes.all.current", 0):
            module.synchronize(index)
        torch_c = getattr(sys.modules.get("torch"), "_C", None)
        for name in ("_cuda_clearCublasWorkspaces",):
            clear = getattr(torch_c, name, None)
            if callable(clear) and self._kind == "cuda":
                clear()

    def close(self) -> None:
        return None


def _accelerator(torch: Any) -> tuple[str | None, int]:
    """The accelerator type torch uses and how many devices it sees.

    Never initialises CUDA: for CUDA and ROCm builds ``torch.cuda.device_count()``
    counts through NVML / amdsmi when they work (fork-safe), unlike
    ``torch.cuda.is_available()``, which calls into the CUDA runtime; a process
    that forks after that cannot use CUDA in its children.
    """
    version = getattr(torch, "version", None)
    if getattr(version, "cuda", None) or getattr(version, "hip", None):
        count = int(torch.cuda.device_count())
        return ("cuda", count) if count else (None, 0)
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "current_accelerator"):
        if not accelerator.is_available():
            return None, 0
        current = accelerator.current_accelerator()
        return (str(current.type), int(accelerator.device_count())) if current else (None, 0)
    return None, 0


def _copy_pools(pools: dict[str, Any]) -> dict[str, Any]:
    return {
        "returnable": pools["returnable"],
        "private": {name: list(entry) for name, entry in pools["private"].items()},
    }

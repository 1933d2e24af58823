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

import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from memdiag.backends.base import Availability, BackendUnavailable
from memdiag.backends.outside import note_nccl
from memdiag.values.readings import HOST_PINNED, DeviceReading, pool_key, pool_of_key

__all__ = ["HOST_PINNED", "PINNED_CACHE_KEPT", "TorchBackend", "pool_key", "pool_of_key"]


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
        self._read_key: dict[int, tuple[int, ...]] = {}
        """Device index -> pool counters of the last :meth:`read`, taken once by
        :meth:`pools` (the tracker asks for pools right after reading)."""
        self._in_use: set[int] = set()
        """Device indices the allocator has used: synchronising them cannot create a
        context any more (it exists), so :meth:`settle` stops asking."""
        self._pinned_owned: int | None = None
        """Bytes of pinned blocks the host allocator owned at the last reading."""
        self.device_wide = True
        """Read device-wide used/total (``mem_get_info``); the registry turns it off
        when NVML or amdsmi gives them, to keep the passing path short."""
        self._init_pid: int | None = None
        """The process in which the accelerator was seen initialised: it stays so there
        (a forked child is another process and asks again)."""
        self._indices: dict[str, int] = {}
        self._raw: dict[str, Callable[..., Any]] | None = None
        """``torch._C``'s CUDA entry points behind the Python wrappers (see
        :func:`_cuda_entry_points`), looked up once."""

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
        known = self._indices.get(device)
        if known is not None:
            return known
        kind, _, index = device.partition(":")
        if kind != self._kind or not index.isdigit() or int(index) >= self._count:
            raise BackendUnavailable(f"torch backend has no device {device!r}")
        self._indices[device] = int(index)
        return int(index)

    def initialized(self) -> bool:
        pid = os.getpid()
        if self._init_pid == pid:
            return True
        module = self._module()
        is_init = getattr(module, "is_initialized", None)
        found = bool(is_init()) if callable(is_init) else True
        if found:
            self._init_pid = pid
        return found

    def _c(self, name: str) -> Callable[..., Any] | None:
        """A ``torch._C`` CUDA entry point (``None`` where this build has none)."""
        raw = self._raw
        if raw is None:
            if self._kind is None:
                return None
            torch_c = getattr(sys.modules.get("torch"), "_C", None)
            raw = self._raw = _cuda_entry_points(torch_c) if self._kind == "cuda" else {}
        return raw.get(name)

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
        if reserved:
            self._in_use.add(index)
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
        raw = self._c("stats")
        if raw is not None:
            nested = raw(index)
            key = _pools_key_of(nested)
            if key is not None:
                self._read_key[index] = key
            return {flat: int(nested[name]["all"][which]) for flat, name, which in _STAT_NAMES}
        return dict(self._module().memory_stats(index))

    def _read_pinned(self) -> DeviceReading:
        now = time.monotonic()
        if self._kind != "cuda":
            raise BackendUnavailable(f"torch backend has no device {HOST_PINNED!r}")
        if not self.initialized():
            return DeviceReading(device=HOST_PINNED, sources=(self.name,), allocated=0, time=now)
        try:
            stats = self._host_stats()
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"torch.cuda.host_memory_stats() failed: {exc}") from exc
        # Bytes of pinned blocks the allocator owns, cached ones included: torch 2.11's
        # "active_bytes" stays up after blocks are freed (verified on an H200), so the
        # cache is told apart by emptying it when a check finds growth.
        owned = stats.get("allocated_bytes")
        self._pinned_owned = owned[0] if owned is not None else 0
        return DeviceReading(
            device=HOST_PINNED,
            sources=(self.name,),
            allocated=owned[0] if owned is not None else 0,
            peak_allocated=(owned[1] or None) if owned is not None else None,
            time=now,
            extra={"initialized": True},
        )

    def recheck(self, device: str, reading: DeviceReading) -> dict[str, int | None] | None:
        """``None`` when the allocator's counters for ``device`` moved since ``reading``
        (bytes allocated, reserved and active; for ``host-pinned``, bytes owned), else
        the peaks read by the same C call: one call, no reading built."""
        if not self.initialized():
            return {} if reading.extra.get("initialized") is False else None
        if reading.extra.get("initialized") is False:
            return None
        if device == HOST_PINNED:
            if self._kind != "cuda":
                return None
            owned = self._host_stats().get("allocated_bytes")
            if owned is None or owned[0] != reading.allocated:
                return None
            return {"peak_allocated": owned[1] or None}
        raw = self._c("stats")
        if raw is None:
            return None
        index = self._index(device)
        nested = raw(index)
        key = _pools_key_of(nested)
        if key is None:
            return None
        self._read_key[index] = key
        if (key[4], key[2], key[3]) != (reading.allocated, reading.reserved, reading.active):
            return None
        return {
            "peak_allocated": int(nested["allocated_bytes"]["all"]["peak"]),
            "peak_reserved": int(nested["reserved_bytes"]["all"]["peak"]),
        }

    def _host_stats(self) -> dict[str, tuple[int, int]]:
        """``name -> (current, peak)`` of the pinned-memory allocator's byte counters,
        from the nested C++ dict where torch has it (``host_memory_stats`` flattens it
        in Python: ~75 us against ~10 us on an H200)."""
        raw = self._c("host_stats")
        if raw is not None:
            nested = raw()
            found: dict[str, tuple[int, int]] = {}
            for name in ("allocated_bytes", "active_bytes"):
                entry = nested.get(name) if isinstance(nested, dict) else None
                if isinstance(entry, dict) and "current" in entry:
                    found[name] = (int(entry["current"]), int(entry.get("peak", 0)))
            if "allocated_bytes" in found:
                return found
        stats_fn = getattr(self._module(), "host_memory_stats", None)
        if not callable(stats_fn):
            raise BackendUnavailable("this torch has no torch.cuda.host_memory_stats()")
        stats = stats_fn()
        return {
            name: (int(stats[f"{name}.current"]), int(stats.get(f"{name}.peak", 0)))
            for name in ("allocated_bytes", "active_bytes")
            if f"{name}.current" in stats
        }

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
        key = self._read_key.pop(index, None) or self._pools_key(index)
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
        """The counters :func:`_pools_key_of` reads, asked now."""
        raw = self._c("stats")
        if raw is None:
            return None
        try:
            return _pools_key_of(raw(index))
        except Exception:  # noqa: BLE001 - no key: take the snapshot every time
            return None

    def reset_peak(self, device: str) -> None:
        if device == HOST_PINNED:
            reset = self._c("reset_host_peak") or getattr(
                self._module(), "reset_peak_host_memory_stats", None
            )
            if callable(reset) and self.initialized():
                reset()
            return
        index = self._index(device)
        if self.initialized():
            raw = self._c("reset_peak")
            if raw is not None:
                raw(index)
            else:
                self._module().reset_peak_memory_stats(index)

    def settle(self, device: str, *, baseline: bool = False) -> None:
        """Synchronise the device and free cuBLAS/cuBLASLt workspaces torch keeps;
        for ``host-pinned``, release the pinned blocks the host allocator caches (which
        also retires blocks whose copies have finished).  At a baseline a cache of at
        most :data:`PINNED_CACHE_KEPT` bytes stays (``.item()`` caches a small pinned
        block on every call; emptying costs ~0.3 ms and the program's next copy
        allocates again): it is all that a baseline can hide of a later leak."""
        if device == HOST_PINNED:
            owned = self._pinned_owned
            if baseline and owned is not None and owned <= PINNED_CACHE_KEPT:
                return
            empty = self._c("host_empty")
            if empty is not None and self.initialized():
                empty()
            return
        index = self._index(device)
        if not self.initialized():
            return
        # Synchronising a device switches to it and would create a context (hundreds
        # of MiB) on a GPU the program never used: only touch devices the allocator uses.
        if index in self._in_use or self._stats(index).get("reserved_bytes.all.current", 0):
            self._in_use.add(index)
            current, sync = self._c("current"), self._c("sync")
            if current is not None and sync is not None and current() == index:
                sync()  # the current device: torch.cuda.synchronize without its wrapper
            else:
                self._module().synchronize(index)
        clear = self._c("clear_cublas")
        if clear is not None:
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


PINNED_CACHE_KEPT = 256 * 1024
"""Pinned bytes a baseline leaves cached (see :meth:`TorchBackend.settle`)."""

_STAT_NAMES = tuple(
    (f"{name}.all.{which}", name, which)
    for name in ("allocated_bytes", "reserved_bytes", "active_bytes")
    for which in ("current", "peak")
)
"""``memory_stats`` name, nested name, counter: the allocator counters a reading uses."""

_CUDA_ENTRY_POINTS = {
    "stats": "_cuda_memoryStats",
    "host_stats": "_cuda_hostMemoryStats",
    "host_empty": "_host_emptyCache",
    "reset_peak": "_cuda_resetPeakMemoryStats",
    "reset_host_peak": "_cuda_resetPeakHostMemoryStats",
    "current": "_cuda_getDevice",
    "sync": "_cuda_synchronize",
    "clear_cublas": "_cuda_clearCublasWorkspaces",
}


def _cuda_entry_points(torch_c: Any) -> dict[str, Callable[..., Any]]:
    """The C functions behind ``torch.cuda``'s memory calls that this build has.  A
    passing check calls a few of them per test; through the Python wrappers (device
    guards, argument checks, flattening ``memory_stats``) each costs 5-20x more."""
    found: dict[str, Callable[..., Any]] = {}
    for key, name in _CUDA_ENTRY_POINTS.items():
        fn = getattr(torch_c, name, None)
        if callable(fn):
            found[key] = fn
    return found


def _pools_key_of(nested: Any) -> tuple[int, ...] | None:
    """Counters that move whenever the pool split can: segments allocated and freed,
    and bytes reserved, active and allocated.  Equal counters, equal split: the
    snapshot (0.17-0.24 ms on an H200, more with many segments) is not taken again,
    so a test that allocates and frees leaves the next baseline the previous split.
    (Blocks allocated and freed in between are not part of the key: they move on
    every test, and with every byte total equal the split is the same unless a
    block of one pool was freed while one of the same size was taken in another.)"""
    try:
        segment = nested["segment"]["all"]
        return (
            int(segment["allocated"]),
            int(segment["freed"]),
            int(nested["reserved_bytes"]["all"]["current"]),
            int(nested["active_bytes"]["all"]["current"]),
            int(nested["allocated_bytes"]["all"]["current"]),
        )
    except Exception:  # noqa: BLE001 - no key: take the snapshot every time
        return None


def _copy_pools(pools: dict[str, Any]) -> dict[str, Any]:
    return {
        "returnable": pools["returnable"],
        "private": {name: list(entry) for name, entry in pools["private"].items()},
    }

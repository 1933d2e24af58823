"""Who holds the device memory that torch's caching allocator does not count.

The driver (NVML, amdsmi) charges a process for more than torch's ``reserved``: the
device context, library handles, NCCL communicators, memory a cuMem or pluggable
allocator maps itself, other libraries' pools.  :func:`outside_holders` names them
for one device, each with bytes and whether the bytes were measured or estimated:

- ``context``: the device context, measured once per device in a fresh process
  (:mod:`memdiag.backends.calibrate`);
- ``blas`` / ``dnn``: the cuBLAS/cuBLASLt and cuDNN handles with their kernels, sizes
  measured once per device the same way; that this process has them is estimated
  (cuBLAS: once a matmul ran; cuDNN: its engine libraries are loaded);
- ``nccl``: one entry per live ``torch.distributed`` process group with the NCCL
  backend, named with its rank and size; bytes estimated from a one-rank
  communicator measured once per device; once its groups are destroyed, NCCL keeps
  its kernels and process-wide state (``nccl_kept``, measured the same way) for the
  process' life: reported where a reading saw an NCCL group (:func:`note_nccl`);
- ``cumem``: memory a cuMem allocator (vLLM's sleep-mode ``CuMemAllocator`` and
  allocators of the same layout, found on the whole heap, frozen objects included)
  has mapped and torch does not count, read from its own table; memory it released
  while torch still counts it (a sleeping pool) is an ``unbacked`` entry;
- ``library``: other libraries' pools that say their size (CuPy's memory pool).

Everything is read from modules the program already imported (``sys.modules``);
nothing here imports a vendor library or touches the device, except the
calibration child, a separate process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from memdiag.backends.calibrate import Calibration, calibrate
from memdiag.heap.view import HeapError, find_instances
from memdiag.values.readings import DeviceReading
from memdiag.values.units import format_bytes

__all__ = [
    "FRAMEWORK_KINDS",
    "Bucket",
    "Holder",
    "note_nccl",
    "outside_holders",
    "process_groups",
]

FRAMEWORK_KINDS = frozenset({"context", "blas", "dnn", "nccl_kept"})
"""Holders that stay for the process' life by design: reported, never leaks."""

_SEARCH_ABOVE = 4 * 1024**2
"""Unexplained bytes outside torch above which the heap is searched for allocators."""
_CUDNN_LIBRARIES = ("libcudnn_engines", "libcudnn_ops", "libcudnn_cnn", "libcudnn_adv")


@dataclass(frozen=True)
class Bucket:
    """Bytes of one named holder of device memory, measured or estimated."""

    kind: str
    """``torch``, ``context``, ``blas``, ``dnn``, ``nccl``, ``cumem``, ``library`` or
    ``unbacked`` (memory torch counts that a cuMem allocator released)."""
    name: str
    nbytes: int
    measured: bool
    detail: str = ""

    @property
    def framework(self) -> bool:
        """Held by design for the process' life (context, library handles): no leak."""
        return self.kind in FRAMEWORK_KINDS

    @property
    def outside_torch(self) -> bool:
        return self.kind != "torch"

    def describe(self) -> str:
        how = "measured" if self.measured else "estimated"
        return f"{self.name} {format_bytes(self.nbytes)} ({how})"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "bytes": self.nbytes,
            "measured": self.measured,
            "detail": self.detail,
        }


Holder = Bucket
"""A holder outside torch's allocator, before :func:`~memdiag.check.accounting.account`
fits it into the driver's figure."""


Calibrate = Callable[..., Calibration | None]


def outside_holders(
    device: str,
    reading: DeviceReading,
    *,
    calibrate_fn: Calibrate = calibrate,
    objects: list[object] | None = None,
) -> list[Holder]:
    """The holders of ``device``'s memory outside torch's allocator in this process.

    ``reading``: the device's reading (its NVML ``uuid`` keys the calibration);
    ``objects`` replaces the heap (tests).  Never raises for a broken library."""
    kind, _, index_text = device.partition(":")
    if kind != "cuda" or not index_text.isdigit():
        return []
    index = int(index_text)
    groups = process_groups(index)
    nccl_used = bool(groups) or index in _NCCL_SEEN or None in _NCCL_SEEN
    uuid = reading.extra.get("uuid")
    cal = None
    # The calibration child reads NVML: an NVIDIA device with a per-process figure.
    if "nvml" in reading.sources and isinstance(uuid, str) and reading.extra.get("own_used"):
        cal = calibrate_fn(index, uuid, nccl=nccl_used)
    out: list[Holder] = []
    once = "measured once for this device in a fresh process"
    if cal is not None:
        out.append(
            Holder(
                "context", "CUDA context", cal.context, True, f"{once}, right after its creation"
            )
        )
        out.append(
            Holder(
                "blas",
                "cuBLAS/cuBLASLt handles and kernels",
                cal.blas,
                False,
                f"size {once}; present once a matmul ran",
            )
        )
        if cal.dnn and _cudnn_loaded():
            out.append(
                Holder(
                    "dnn",
                    "cuDNN handle and kernels",
                    cal.dnn,
                    False,
                    f"size {once}; cuDNN's engine libraries are loaded",
                )
            )
    per_comm = cal.nccl if cal is not None else None
    for name, rank, size in groups:
        out.append(
            Holder(
                "nccl",
                f"NCCL communicator of process group {name!r} (rank {rank} of {size})",
                per_comm or 0,
                False,
                "a one-rank communicator's size, measured once for this device"
                if per_comm
                else "size unknown (not measured here)",
            )
        )
    if not groups and nccl_used and cal is not None and cal.nccl_kept:
        out.append(
            Holder(
                "nccl_kept",
                "NCCL kernels and state kept after destroy_process_group()",
                cal.nccl_kept,
                False,
                "what a one-rank communicator leaves after it is destroyed, measured once "
                "for this device; an NCCL group was seen in this process",
            )
        )
    out.extend(_library_holders(index))
    # The cuMem search walks the whole heap (forked when objects are frozen): only when
    # the cheap holders leave memory unexplained, or torch counts more than the driver
    # charges (a cuMem pool released behind torch's back).
    own = int(reading.extra.get("own_used") or 0)
    unexplained = own - (reading.reserved or 0) - sum(h.nbytes for h in out)
    if objects is not None or unexplained > _SEARCH_ABOVE or (reading.reserved or 0) > own:
        out.extend(_cumem_holders(index, objects))
    return out


# -- NCCL ------------------------------------------------------------------------------

_NCCL_SEEN: set[int | None] = set()
"""Devices (``None``: not bound to one) on which a live NCCL group was seen."""


def note_nccl() -> None:
    """Remember the devices of live NCCL process groups (a few attribute reads; called
    with every torch reading): NCCL keeps memory after its groups are destroyed."""
    c10d: Any = sys.modules.get("torch.distributed.distributed_c10d")
    pg_map = getattr(getattr(c10d, "_world", None), "pg_map", None)
    if not pg_map or not isinstance(pg_map, Mapping):
        return
    try:
        for pg, entry in list(pg_map.items()):
            backend = str(entry[0] if isinstance(entry, tuple) and entry else entry).lower()
            if "nccl" in backend:
                bound = getattr(pg, "bound_device_id", None)
                index = getattr(bound, "index", None)
                _NCCL_SEEN.add(None if index is None else int(index))
    except Exception:  # noqa: BLE001 - a half-destroyed group is not a crash
        return


def process_groups(
    index: int, *, backends: tuple[str, ...] = ("nccl", "xccl")
) -> list[tuple[str, int, int]]:
    """(name, rank, size) of every live ``torch.distributed`` process group whose
    backend is one of ``backends`` and that is bound to device ``index`` (or to none).
    Read from ``torch.distributed``'s registry of live groups, only where the program
    imported it."""
    c10d: Any = sys.modules.get("torch.distributed.distributed_c10d")
    world = getattr(c10d, "_world", None)
    pg_map = getattr(world, "pg_map", None)
    names = getattr(world, "pg_names", None)
    if not isinstance(pg_map, Mapping):
        return []
    out: list[tuple[str, int, int]] = []
    for pg, entry in list(pg_map.items()):
        backend = str(entry[0] if isinstance(entry, tuple) and entry else entry).lower()
        if not any(wanted in backend for wanted in backends):
            continue
        try:
            bound = getattr(pg, "bound_device_id", None)
            if bound is not None and bound.index is not None and int(bound.index) != index:
                continue
            name = str(names.get(pg, "?")) if isinstance(names, Mapping) else "?"
            out.append((name, int(pg.rank()), int(pg.size())))
            if "nccl" in backend:
                _NCCL_SEEN.add(index)
        except Exception:  # noqa: BLE001 - a half-destroyed group is not a crash
            continue
    return out


# -- cuMem and pluggable allocators -----------------------------------------------------


def _is_cumem_allocator(tp: type) -> bool:
    return tp.__name__.endswith("CuMemAllocator")


def _cumem_table(obj: object) -> tuple[dict[int, int], list[tuple[int, int]]] | None:
    """(device index -> bytes mapped, pool ids of its torch MemPools), read from the
    allocator's own table (vLLM: ``pointer_to_data`` -> ``AllocationData.handle`` =
    (device, size, pointer, handle))."""
    table = getattr(obj, "__dict__", {}).get("pointer_to_data")
    if not isinstance(table, dict):
        return None
    mapped: dict[int, int] = {}
    for data in list(table.values()):
        handle = getattr(data, "handle", None)
        if isinstance(handle, tuple) and len(handle) >= 2:
            device, size = int(handle[0]), int(handle[1])
            mapped[device] = mapped.get(device, 0) + size
    pools: list[tuple[int, int]] = []
    for entry in list((getattr(obj, "__dict__", {}).get("allocator_and_pools") or {}).values()):
        pool_id = getattr(entry[0] if isinstance(entry, tuple) else entry, "id", None)
        if isinstance(pool_id, tuple) and len(pool_id) == 2:
            pools.append((int(pool_id[0]), int(pool_id[1])))
    return mapped, pools


def _cumem_holders(index: int, objects: list[object] | None) -> list[Holder]:
    try:
        tables = find_instances(_is_cumem_allocator, _cumem_table, objects)
    except HeapError:
        return []
    out: list[Holder] = []
    for mapped, pools in tables:
        here = mapped.get(index, 0)
        counted = _pool_reserved(index, pools)
        outside = max(0, here - counted)
        if outside or not counted:
            out.append(
                Holder(
                    "cumem",
                    "cuMem allocator (CuMemAllocator)",
                    outside,
                    True,
                    "bytes mapped in its allocation table and not counted by torch",
                )
            )
        if counted > here:
            out.append(
                Holder(
                    "unbacked",
                    "torch pool memory a cuMem allocator released (sleeping)",
                    counted - here,
                    True,
                    "torch counts it as reserved; the driver no longer charges it",
                )
            )
    return out


def _pool_reserved(index: int, pools: list[tuple[int, int]]) -> int:
    """Bytes torch counts as reserved in ``pools`` on device ``index``."""
    torch: Any = sys.modules.get("torch")
    if not pools or torch is None:
        return 0
    wanted = set(pools)
    try:
        segments = torch.cuda.memory_snapshot()
    except Exception:  # noqa: BLE001
        return 0
    return sum(
        int(s.get("total_size", 0))
        for s in segments
        if s.get("device") == index and tuple(s.get("segment_pool_id") or ()) in wanted
    )


# -- other libraries ---------------------------------------------------------------------


def _library_holders(index: int) -> list[Holder]:
    out: list[Holder] = []
    cupy: Any = sys.modules.get("cupy")
    if cupy is not None:
        try:
            pool = cupy.get_default_memory_pool()
            nbytes = int(pool.total_bytes())
            device = int(cupy.cuda.runtime.getDevice()) if nbytes else index
        except Exception:  # noqa: BLE001
            nbytes, device = 0, -1
        if nbytes and device == index:
            out.append(
                Holder(
                    "library",
                    "CuPy memory pool",
                    nbytes,
                    True,
                    "cupy.get_default_memory_pool().total_bytes()",
                )
            )
    return out


def _cudnn_loaded() -> bool:
    """Whether cuDNN's engine libraries are mapped: torch loads them at the first
    cuDNN call, and the handle is created with them."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any(name in line for line in maps for name in _CUDNN_LIBRARIES)
    except OSError:
        return True  # cannot tell: keep the estimate

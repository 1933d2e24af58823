"""Census of live torch tensors, identified by their storage.

A tensor's bytes live in its storage; views and aliases share one storage, so the
census counts each storage once, at the storage's size.  A storage is identified by
``untyped_storage()._cdata`` (the address of the C++ ``StorageImpl``, unique while it
lives).  Addresses are reused after a free, so "did this storage exist at baseline"
is answered with a weak reference to the storage's Python object, which torch
preserves for as long as the storage lives: a key whose weak reference still points
at the same object is the same storage.

The census never imports torch unless torch is already imported by the program
(no tensors can exist otherwise) and never touches device memory: it reads metadata
only, so it may also run in a forked child (see :mod:`memdiag.heap.view`).
"""

from __future__ import annotations

import gc
import itertools
import sys
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from memdiag.heap.hidden import HiddenRefs, find_hidden
from memdiag.heap.hostmem import HostCounters, host_counters
from memdiag.heap.view import HeapView, call_with_full_heap
from memdiag.values.findings import TensorSummary
from memdiag.values.readings import HOST_PINNED

__all__ = [
    "Census",
    "StorageLedger",
    "StorageRecord",
    "ledger_deaths",
    "take_census",
    "tensor_class",
]


_TYPE_CACHE: dict[int, tuple[weakref.ReferenceType[type], bool]] = {}


def is_tensor_type(tp: type, tensor: type) -> bool:
    """``issubclass(tp, tensor)``, cached by the type's identity.  Walks test
    ``type(obj)``, never ``isinstance``: that would call ``__class__`` on proxies, mocks
    and lazy modules.  The cache is keyed by ``id(tp)`` (checked through a weak
    reference), never by the type itself: a metaclass' ``__eq__``/``__hash__`` is the
    program's code and is never called."""
    key = id(tp)
    cached = _TYPE_CACHE.get(key)
    if cached is not None and cached[0]() is tp:
        return cached[1]
    try:
        known = bool(type.__subclasscheck__(tensor, tp))
    except TypeError:
        known = False
    try:
        _TYPE_CACHE[key] = (weakref.ref(tp), known)
    except TypeError:  # a type without weak reference support: not cached
        pass
    return known


def tensors_among(objects: Iterable[object], tensor: type) -> list[Any]:
    """The objects among ``objects`` whose type is ``tensor`` or a subclass, at C speed:
    each distinct type is classified once (by identity, :func:`is_tensor_type`), then
    objects are picked by their type's id without a Python-level call per object."""
    listing = objects if isinstance(objects, list) else list(objects)
    kinds = dict(zip(map(id, map(type, listing)), map(type, listing), strict=True))
    wanted = {key for key, tp in kinds.items() if is_tensor_type(tp, tensor)}
    del kinds
    if not wanted:
        return []
    return list(itertools.compress(listing, map(wanted.__contains__, map(id, map(type, listing)))))


def _heap_tensors(objects: list[object], hidden: HiddenRefs, tensor: type) -> list[Any]:
    """The tensors of the heap listing, then those only hidden references reach."""
    return tensors_among(objects, tensor) + tensors_among(hidden.added, tensor)


def tensor_class() -> type | None:
    """``torch.Tensor`` if the program has imported torch, else ``None``."""
    torch = sys.modules.get("torch")
    tensor = getattr(torch, "Tensor", None) if torch is not None else None
    return tensor if isinstance(tensor, type) else None


@dataclass(frozen=True)
class StorageRecord:
    """One live storage: its key, size, device, and the tensors that view it."""

    key: int
    nbytes: int
    device: str
    data_ptr: int
    example: TensorSummary
    tensor_count: int
    frozen: bool
    """Every tensor object that views this storage is frozen by ``gc.freeze()``."""


@dataclass(frozen=True)
class Census:
    """Live storages found in one heap walk, split by whether they predate baseline."""

    new: tuple[StorageRecord, ...]
    """Storages that did not exist at the baseline, largest first."""
    baseline_bytes: dict[str, int]
    """Device -> bytes of the live storages that predate the baseline."""
    frozen_bytes: dict[str, int]
    """Device -> bytes of the new storages seen only through ``gc.freeze()``-frozen tensors."""


_DEATHS = [0]


def _storage_died(ref: object) -> None:
    _DEATHS[0] += 1


def ledger_deaths() -> int:
    """How many storages recorded by any :class:`StorageLedger` have been freed so far.

    A storage alive at a baseline and freed since lets a new one of the same size take
    its bytes: the host counters of :mod:`memdiag.heap.hostmem` cannot see that, so
    the CPU gate also compares this count."""
    return _DEATHS[0]


class StorageRef(weakref.ref[Any]):
    """A weak reference to a storage that remembers its device and size."""

    __slots__ = ("device", "nbytes")
    device: str
    nbytes: int


@dataclass
class StorageLedger:
    """Storages known to predate the baseline, held by weak reference only."""

    refs: dict[int, weakref.ReferenceType[Any]] = field(default_factory=dict)
    strong_keys: set[int] = field(default_factory=set)
    """Keys seen only through frozen tensors in a forked walk (no weakref possible)."""
    counters: HostCounters | None = None
    """Host memory counters when the ledger was last refreshed (``None``: unknown)."""

    def live_bytes(self, device: str) -> int:
        """Bytes of the recorded storages on ``device`` that are still alive."""
        total = 0
        for ref in self.refs.values():
            storage = ref()
            if storage is None:
                continue
            if isinstance(ref, StorageRef):
                if ref.device == device:
                    total += ref.nbytes
            elif device == "cpu":
                try:
                    if storage.device.type == "cpu":
                        total += int(storage.nbytes())
                except Exception:  # noqa: BLE001
                    continue
        return total

    def knows(self, key: int, storage: object) -> bool:
        ref = self.refs.get(key)
        if ref is not None:
            return ref() is storage
        return key in self.strong_keys

    def refresh(self) -> int:
        """Record every storage alive now; returns the number of heap objects walked."""
        tensor = tensor_class()
        self.refs.clear()
        self.strong_keys.clear()
        self.counters = host_counters()
        if tensor is None:
            return 0
        objects = gc.get_objects()
        hidden = find_hidden(objects, arrays=False)
        try:
            for obj in _heap_tensors(objects, hidden, tensor):
                storage = _storage_of(obj)
                if storage is not None:
                    key = storage._cdata
                    if key in self.refs:
                        continue
                    try:
                        ref = StorageRef(storage, _storage_died)
                    except TypeError:
                        self.strong_keys.add(key)
                        continue
                    try:
                        ref.device = _device_name(obj)
                        ref.nbytes = int(storage.nbytes())
                    except Exception:  # noqa: BLE001
                        ref.device, ref.nbytes = "?", 0
                    self.refs[key] = ref
            if gc.get_freeze_count():
                self.strong_keys.update(call_with_full_heap(_frozen_storage_keys))
            return len(objects)
        finally:
            hidden.clear()
            del objects

    def adopt_new(self, known: StorageLedger) -> None:
        """Add every storage alive now that ``known`` (an earlier snapshot) did not know."""
        now = StorageLedger()
        now.refresh()
        try:
            for key, ref in now.refs.items():
                storage = ref()
                if storage is not None and not known.knows(key, storage):
                    self.refs[key] = ref
                del storage
            self.strong_keys.update(now.strong_keys - known.strong_keys)
        finally:
            now.clear()

    def clear(self) -> None:
        self.refs.clear()
        self.strong_keys.clear()
        self.counters = None


def _frozen_storage_keys(view: HeapView) -> set[int]:
    tensor = tensor_class()
    keys: set[int] = set()
    if tensor is None:
        return keys
    for obj in tensors_among(view.objects, tensor):
        if id(obj) in view.frozen_ids:
            storage = _storage_of(obj)
            if storage is not None:
                keys.add(storage._cdata)
    return keys


def _storage_of(tensor: Any) -> Any:
    """The storage that identifies ``tensor``'s memory, or ``None`` without real memory.

    Reads through ``torch._C.TensorBase`` with ``__torch_function__`` disabled, so no
    code of a tensor subclass runs.  Sparse tensors (COO, CSR, CSC, BSR, BSC) have no
    storage of their own: their values' storage stands for them, and
    :func:`_storage_bytes` adds the index storages to its size."""
    parts = _parts(tensor)
    return parts[0] if parts else None


def _parts(tensor: Any) -> list[Any]:
    """The storages holding ``tensor``'s bytes, the identifying one first."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return []
    base = torch._C.TensorBase
    try:
        with torch._C.DisableTorchFunctionSubclass():
            if base.is_meta.__get__(tensor):
                return []
            layout = base.layout.__get__(tensor)
            if layout == torch.sparse_coo:
                views = [base._values(tensor), base._indices(tensor)]
            elif layout in (torch.sparse_csr, torch.sparse_bsr):
                views = [base.values(tensor), base.crow_indices(tensor), base.col_indices(tensor)]
            elif layout in (torch.sparse_csc, torch.sparse_bsc):
                views = [base.values(tensor), base.ccol_indices(tensor), base.row_indices(tensor)]
            else:
                views = [tensor]
            storages = []
            for view in views:
                storage = base.untyped_storage(view)
                if storage.data_ptr() == 0 and storage.nbytes() == 0:
                    continue
                storages.append(storage)
            return storages
    except Exception:  # noqa: BLE001 - FakeTensor, functional and wrapper subclasses
        return []


def _storage_bytes(tensor: Any, storage: Any) -> int:
    """Bytes of ``storage``, plus the index storages when ``tensor`` is sparse."""
    torch: Any = sys.modules.get("torch")
    try:
        with torch._C.DisableTorchFunctionSubclass():
            if torch._C.TensorBase.layout.__get__(tensor) == torch.strided:
                return int(storage.nbytes())
    except Exception:  # noqa: BLE001
        return 0
    return sum(int(s.nbytes()) for s in _parts(tensor))


def _device_name(tensor: Any) -> str:
    torch: Any = sys.modules.get("torch")
    with torch._C.DisableTorchFunctionSubclass():
        device = torch._C.TensorBase.device.__get__(tensor)
    return f"{device.type}:{device.index}" if device.index is not None else str(device.type)


def _cuda_initialized() -> bool:
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    is_init = getattr(cuda, "is_initialized", None)
    try:
        return bool(is_init()) if callable(is_init) else False
    except Exception:  # noqa: BLE001
        return False


def _is_pinned(tensor: Any) -> bool:
    try:
        return bool(tensor.is_pinned())
    except Exception:  # noqa: BLE001
        return False


def _summary(tensor: Any, storage: Any, device: str | None = None) -> TensorSummary:
    torch: Any = sys.modules.get("torch")
    base = torch._C.TensorBase
    try:
        with torch._C.DisableTorchFunctionSubclass():
            shape = tuple(int(d) for d in base.shape.__get__(tensor))
    except Exception:  # noqa: BLE001
        shape = ()
    try:
        with torch._C.DisableTorchFunctionSubclass():
            dtype = str(base.dtype.__get__(tensor)).removeprefix("torch.")
            layout = str(base.layout.__get__(tensor)).removeprefix("torch.")
    except Exception:  # noqa: BLE001
        dtype, layout = "?", "strided"
    name = type(tensor).__name__
    if layout != "strided":
        name = f"{layout} {name}"
    return TensorSummary(
        shape=shape,
        dtype=dtype,
        device=device or _device_name(tensor),
        type_name=name,
        nbytes=_storage_bytes(tensor, storage),
    )


def census_of(
    view: HeapView,
    ledger: StorageLedger | None,
    devices: Iterable[str] | None = None,
    pinned_keys: frozenset[int] | None = None,
) -> Census:
    """Walk ``view`` once and sort live storages into baseline and new."""
    tensor = tensor_class()
    wanted = set(devices) if devices is not None else None
    baseline: dict[str, int] = {}
    frozen_bytes: dict[str, int] = {}
    seen: dict[int, list[Any]] = {}  # key -> [storage, summary, count, all_frozen]
    # Pinned CPU tensors are charged to the "host-pinned" device when it is checked;
    # asking needs the CUDA runtime, so never in a forked child nor before CUDA is up.
    pinned = (wanted is None or HOST_PINNED in wanted) and not view.in_child and _cuda_initialized()
    if pinned_keys is not None:  # asked in the parent before a forked walk
        pinned = False
    # Storages held only from C++ (an autograd graph's saved tensors, a TorchScript
    # module's parameters) have no Python tensor on the heap: count them too.
    hidden = find_hidden(view.objects, arrays=False) if tensor is not None else None
    if tensor is not None and hidden is not None:
        for obj in _heap_tensors(view.objects, hidden, tensor):
            storage = _storage_of(obj)
            if storage is None:
                continue  # sparse, meta or fake tensors: nothing to count
            key = storage._cdata
            entry = seen.get(key)
            frozen = id(obj) in view.frozen_ids
            if entry is None:
                try:
                    device = _device_name(obj)
                except Exception:  # noqa: BLE001 - a tensor whose device cannot be read
                    continue
                if device == "cpu" and (
                    (pinned and _is_pinned(obj)) or (pinned_keys is not None and key in pinned_keys)
                ):
                    device = HOST_PINNED
                if wanted is not None and device not in wanted:
                    continue
                seen[key] = [storage, _summary(obj, storage, device), 1, frozen]
            else:
                entry[2] += 1
                entry[3] = entry[3] and frozen
    if hidden is not None:
        hidden.clear()
    records: list[StorageRecord] = []
    for key, (storage, summary, count, all_frozen) in seen.items():
        device = summary.device
        if ledger is not None and ledger.knows(key, storage):
            baseline[device] = baseline.get(device, 0) + summary.nbytes
            continue
        try:
            data_ptr = int(storage.data_ptr())
        except Exception:  # noqa: BLE001
            data_ptr = 0
        records.append(
            StorageRecord(key, summary.nbytes, device, data_ptr, summary, count, all_frozen)
        )
        if all_frozen:
            frozen_bytes[device] = frozen_bytes.get(device, 0) + summary.nbytes
    seen.clear()
    records.sort(key=lambda r: r.nbytes, reverse=True)
    return Census(
        new=tuple(records),
        baseline_bytes=baseline,
        frozen_bytes=frozen_bytes,
    )


def take_census(ledger: StorageLedger | None, devices: Iterable[str] | None = None) -> Census:
    """Census of the whole heap, frozen objects included (forked walk when needed)."""
    device_list = list(devices) if devices is not None else None
    pinned_keys = None
    if gc.get_freeze_count() and (device_list is None or HOST_PINNED in device_list):
        pinned_keys = _pinned_keys()  # a forked child must not ask the CUDA runtime
    return call_with_full_heap(lambda view: census_of(view, ledger, device_list, pinned_keys))


def _pinned_keys() -> frozenset[int] | None:
    """Storage keys of pinned CPU tensors visible here (not frozen ones)."""
    tensor = tensor_class()
    if tensor is None or not _cuda_initialized():
        return None
    keys: set[int] = set()
    objects = gc.get_objects()
    try:
        obj: Any
        for obj in tensors_among(objects, tensor):
            if _device_name(obj) == "cpu":
                storage = _storage_of(obj)
                if storage is not None and _is_pinned(obj):
                    keys.add(storage._cdata)
    finally:
        del objects
    return frozenset(keys)


_FROZEN_CPU: dict[int, dict[int, int]] = {}
"""Freeze count -> CPU storages (key -> bytes) of frozen tensors, read in a fork."""


def _cpu_storages(objects: Iterable[object], tensor: type, into: dict[int, int]) -> None:
    """``storage key -> bytes`` of the CPU tensors among ``objects``, added to ``into``."""
    obj: Any
    for obj in tensors_among(objects, tensor):
        try:
            if _device_name(obj) != "cpu":
                continue
        except Exception:  # noqa: BLE001
            continue
        storage = _storage_of(obj)
        if storage is not None:
            into[int(storage._cdata)] = _storage_bytes(obj, storage)


def _frozen_cpu_storages(view: HeapView) -> dict[int, int]:
    tensor = tensor_class()
    found: dict[int, int] = {}
    if tensor is not None:
        frozen = view.frozen_ids
        tensors = [o for o in tensors_among(view.objects, tensor) if id(o) in frozen]
        _cpu_storages(tensors, tensor, found)
    return found


def frozen_cpu_storages() -> dict[int, int]:
    """CPU storages of tensors frozen by ``gc.freeze()`` (invisible to
    ``gc.get_objects()``), read in a forked child once per freeze count: a reading
    shows the bytes the verdict counts, frozen ones included."""
    count = gc.get_freeze_count()
    if not count:
        return {}
    cached = _FROZEN_CPU.get(count)
    if cached is None:
        try:
            cached = call_with_full_heap(_frozen_cpu_storages)
        except Exception:  # noqa: BLE001 - no fork here: the census reports frozen bytes later
            cached = {}
        _FROZEN_CPU.clear()
        _FROZEN_CPU[count] = cached
    return cached


def live_cpu_bytes() -> int:
    """Bytes of distinct live CPU storages, views counted once, frozen ones included."""
    tensor = tensor_class()
    if tensor is None:
        return 0
    keys: dict[int, int] = dict(frozen_cpu_storages())
    objects = gc.get_objects()
    # A storage need not have a Python tensor to be held: count what autograd graphs
    # and TorchScript modules hold from C++ as well.
    hidden = find_hidden(objects, arrays=False)
    try:
        _cpu_storages(_heap_tensors(objects, hidden, tensor), tensor, keys)
    finally:
        hidden.clear()
        del objects
    return sum(keys.values())


def new_storage_bytes(ledger: StorageLedger, devices: Iterable[str]) -> dict[str, int]:
    """Bytes of storages on ``devices`` created since ``ledger``'s baseline and alive
    now, per device; one in-process walk (frozen objects are the census' business)."""
    view = HeapView(objects=gc.get_objects(), frozen_ids=frozenset(), in_child=False)
    try:
        grown: dict[str, int] = {}
        for record in census_of(view, ledger, list(devices)).new:
            grown[record.device] = grown.get(record.device, 0) + record.nbytes
        return grown
    finally:
        del view

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
import sys
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from memdiag.heap.hidden import find_hidden, with_hidden
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


def is_tensor_type(tp: type, tensor: type, _cache: dict[type, bool] = {}) -> bool:  # noqa: B006
    """``issubclass(tp, tensor)``, cached.  Walks test ``type(obj)``, never
    ``isinstance``: that would call ``__class__`` on proxies, mocks and lazy modules."""
    known = _cache.get(tp)
    if known is None:
        try:
            known = _cache[tp] = issubclass(tp, tensor)
        except TypeError:
            known = False
    return known


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
            for obj in with_hidden(objects, hidden):
                if is_tensor_type(type(obj), tensor):
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
    for obj in view.objects:
        if id(obj) in view.frozen_ids and is_tensor_type(type(obj), tensor):
            storage = _storage_of(obj)
            if storage is not None:
                keys.add(storage._cdata)
    return keys


def _storage_of(tensor: Any) -> Any:
    """The tensor's untyped storage, or ``None`` for tensors without real memory."""
    try:
        if tensor.is_meta or tensor.is_sparse:
            return None
        storage = tensor.untyped_storage()
        if storage.data_ptr() == 0 and storage.nbytes() == 0:
            return None
        return storage
    except Exception:  # noqa: BLE001 - FakeTensor, functional wrappers, odd subclasses
        return None


def _device_name(tensor: Any) -> str:
    device = tensor.device
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
    try:
        shape = tuple(int(d) for d in tensor.shape)
    except Exception:  # noqa: BLE001
        shape = ()
    return TensorSummary(
        shape=shape,
        dtype=str(tensor.dtype).removeprefix("torch."),
        device=device or _device_name(tensor),
        type_name=type(tensor).__name__,
        nbytes=int(storage.nbytes()),
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
        for obj in with_hidden(view.objects, hidden):
            if not is_tensor_type(type(obj), tensor):
                continue
            storage = _storage_of(obj)
            if storage is None:
                continue  # sparse, meta or fake tensors: nothing to count
            key = storage._cdata
            entry = seen.get(key)
            frozen = id(obj) in view.frozen_ids
            if entry is None:
                device = _device_name(obj)
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
        for obj in objects:
            if is_tensor_type(type(obj), tensor) and _device_name(obj) == "cpu":
                storage = _storage_of(obj)
                if storage is not None and _is_pinned(obj):
                    keys.add(storage._cdata)
    finally:
        del objects
    return frozenset(keys)


def live_cpu_bytes() -> int:
    """Bytes of distinct live CPU storages visible to ``gc.get_objects()`` (not frozen)."""
    tensor = tensor_class()
    if tensor is None:
        return 0
    keys: dict[int, int] = {}
    objects = gc.get_objects()
    # A storage need not have a Python tensor to be held: count what autograd graphs
    # and TorchScript modules hold from C++ as well.
    hidden = find_hidden(objects, arrays=False)
    try:
        obj: Any
        for obj in with_hidden(objects, hidden):
            if is_tensor_type(type(obj), tensor):
                try:
                    if obj.device.type != "cpu":
                        continue
                except Exception:  # noqa: BLE001
                    continue
                storage = _storage_of(obj)
                if storage is not None:
                    keys[storage._cdata] = storage.nbytes()
    finally:
        hidden.clear()
        del objects
    return sum(keys.values())

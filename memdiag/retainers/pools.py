"""Owners of private allocator pools: the Python objects that keep a pool's memory.

A private pool of torch's caching allocator keeps its segments reserved while any
owner lives, and ``empty_cache()`` cannot return them: a captured
``torch.cuda.CUDAGraph`` (``g.pool()``), a ``torch.cuda.MemPool`` (``.id``), and
torch.compile's CUDA graph trees (``CUDAGraphTreeManager.cuda_graphs_thread_pool``,
whose nodes' graphs share that pool).  A pool with no owner left is freed by the
next ``empty_cache()``.

Owners are recognised by type (never ``isinstance``, which asks proxies for their
``__class__``) and read through plain attributes; torch is looked up in
``sys.modules``, never imported, and nothing here calls into the CUDA runtime.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from memdiag.heap.introspect import subclasses
from memdiag.heap.view import find_instances

__all__ = ["live_pools", "owner_types", "pool_of"]

Pool = tuple[int, int]


def owner_types() -> list[type]:
    """Every class whose instances can own a private pool, in this process."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return []
    bases: list[type] = []
    for name in ("_CUDAGraph", "_MemPool"):
        base = getattr(getattr(torch, "_C", None), name, None)
        if isinstance(base, type):
            bases.append(base)
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    manager = getattr(trees, "CUDAGraphTreeManager", None)
    if isinstance(manager, type):
        bases.append(manager)
    return subclasses(bases)


def _as_pool(value: object) -> Pool | None:
    if type(value) is tuple and len(value) == 2 and all(type(v) is int for v in value):
        return int(value[0]), int(value[1])
    return None


def pool_of(obj: object) -> Pool | None:
    """The private pool ``obj`` owns, or ``None`` (uncaptured graph, not an owner)."""
    tp_name = type(obj).__name__
    try:
        if tp_name == "CUDAGraphTreeManager" or hasattr(type(obj), "cuda_graphs_thread_pool"):
            return _as_pool(obj.__dict__.get("cuda_graphs_thread_pool"))
        value = getattr(obj, "pool", None)
        if callable(value):
            return _as_pool(value())
        return _as_pool(getattr(obj, "id", None))
    except Exception:  # noqa: BLE001 - a graph never captured has no pool
        return None


def _owned(obj: object) -> tuple[Pool, str] | None:
    pool = pool_of(obj)
    return None if pool is None else (pool, type(obj).__qualname__)


def live_pools(objects: Iterable[object] | None = None) -> dict[Pool, list[str]]:
    """Pools with a live owner on the heap -> the owners' type names.

    Owners frozen by ``gc.freeze()`` count: the heap is read through
    :func:`~memdiag.heap.view.find_instances` (a forked walk when anything is frozen;
    reading a graph's or pool's id there is bookkeeping, no device work)."""
    types_ = frozenset(map(id, owner_types()))  # by id: no metaclass __hash__ runs
    if not types_:
        return {}
    out: dict[Pool, list[str]] = {}
    for pool, name in find_instances(lambda tp: id(tp) in types_, _owned, objects):
        out.setdefault(pool, []).append(name)
    return out

"""Who holds the leaked tensors: the entry points.

:func:`analyze_heap` runs the three stages over one :class:`~memdiag.heap.view.HeapView`:

1. :mod:`~memdiag.retainers.scan`: one chunked pass over the heap finds the tensors
   whose storage is a target and, by a reverse search over the referent ids stored
   in that pass, every object between them and a root;
2. :mod:`~memdiag.retainers.paths`: one path per tensor from its preferred root,
   with the suspect reference marked;
3. :mod:`~memdiag.retainers.grouping`: findings grouped by retainer, sizes counted
   once per storage, framework retention and ignore rules applied.

:func:`analyze` wraps it in :func:`~memdiag.heap.view.call_with_full_heap` so objects
frozen by ``gc.freeze()`` are seen without changing the program's freeze state.
torch is only looked up in ``sys.modules``, never imported.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from memdiag.heap.census import _storage_of
from memdiag.heap.hidden import find_hidden, with_hidden
from memdiag.heap.introspect import subclasses
from memdiag.heap.view import HeapView, call_with_full_heap
from memdiag.retainers.describe import is_a
from memdiag.retainers.grouping import assemble, no_tensor_group
from memdiag.retainers.known import DEFAULT_KNOWN, IgnoreRule, KnownRetention
from memdiag.retainers.model import RetainerReport
from memdiag.retainers.paths import PathForest
from memdiag.retainers.pools import owner_types, pool_of
from memdiag.retainers.roots import RootEnv, ThreadStack, capture_threads, own_frame_ids
from memdiag.retainers.scan import scan_heap
from memdiag.values.readings import pool_key
from memdiag.values.units import format_bytes

__all__ = ["analyze", "analyze_heap"]


def _holder_types(torch: Any) -> list[type]:
    return subclasses((torch._C.TensorBase, torch.UntypedStorage))


def _storage_key(torch: Any) -> Callable[[object], int | None]:
    storage_type = torch.UntypedStorage
    disable = torch._C.DisableTorchFunctionSubclass

    def key_of(obj: Any) -> int | None:
        try:
            with disable():
                if is_a(obj, storage_type):
                    return int(obj._cdata)
            # The census' key: sparse tensors are keyed by their values' storage.
            storage = _storage_of(obj)
            return None if storage is None else int(storage._cdata)
        except Exception:  # noqa: BLE001 - meta, fake and wrapper tensors have no storage
            return None

    return key_of


def _owner_or_storage_key(
    owners: frozenset[type], storage_key: Callable[[object], int | None]
) -> Callable[[object], int | None]:
    """A pool owner's key is its pool's (:func:`pool_key`); a tensor's, its storage's."""

    def key_of(obj: object) -> int | None:
        if type(obj) in owners:
            pool = pool_of(obj)
            return None if pool is None else pool_key(pool)
        return storage_key(obj)

    return key_of


def _no_torch_report(targets: Mapping[int, int], heap: int, start: float) -> RetainerReport:
    """Without torch there are no tensor objects: every storage is held natively."""
    total = sum(targets.values())
    group = no_tensor_group(
        sorted(targets),
        total,
        example_tensor=f"{len(targets)} storages, {format_bytes(total)}",
        note="no Python tensor object refers to these storages",
    )
    return RetainerReport(
        groups=(),
        unrooted=(group,),
        heap_objects=heap,
        elapsed_s=time.perf_counter() - start,
        notes=("torch is not imported in this process; no tensor objects to look for",),
        target_storages=len(targets),
        target_bytes=total,
    )


def analyze_heap(
    view: HeapView,
    targets: Mapping[int, int],
    *,
    max_groups: int = 20,
    ignore: Sequence[IgnoreRule] = (),
    known: Sequence[KnownRetention] = DEFAULT_KNOWN,
    alloc_sites: Mapping[int, str] | None = None,
    baseline_ids: frozenset[int] | set[int] | None = None,
    threads: Sequence[ThreadStack] | None = None,
    exception: BaseException | None = None,
) -> RetainerReport:
    """Find who holds the storages in ``targets`` (storage key -> nbytes) on ``view``.

    ``threads`` and ``exception`` are the thread stacks and the exception being
    handled, captured where the program runs (:func:`analyze` does that before a
    forked walk, where other threads no longer exist); by default they are read here.
    """
    start = time.perf_counter()
    target_map = {int(k): int(v) for k, v in targets.items()}
    heap = len(view.objects)
    if not target_map:
        return RetainerReport(groups=(), heap_objects=heap, elapsed_s=time.perf_counter() - start)
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return _no_torch_report(target_map, heap, start)
    # The kept referent lists survive long enough to trigger full collections of the
    # whole heap; nothing the analysis allocates is cyclic garbage, so pause the
    # collector (the freeze state is not touched).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _analyze(
            view,
            target_map,
            start=start,
            torch=torch,
            max_groups=max_groups,
            ignore=ignore,
            known=known,
            alloc_sites=alloc_sites or {},
            baseline_ids=baseline_ids,
            threads=threads,
            exception=exception,
            caller_targets=targets,
        )
    finally:
        if was_enabled:
            gc.enable()


def _analyze(
    view: HeapView,
    target_map: dict[int, int],
    *,
    start: float,
    torch: Any,
    max_groups: int,
    ignore: Sequence[IgnoreRule],
    known: Sequence[KnownRetention],
    alloc_sites: Mapping[int, str],
    baseline_ids: frozenset[int] | set[int] | None,
    threads: Sequence[ThreadStack] | None,
    exception: BaseException | None,
    caller_targets: object,
) -> RetainerReport:
    heap = len(view.objects)
    stacks = capture_threads() if threads is None else tuple(threads)
    env = RootEnv(stacks, exception, view.frozen_ids)
    exclude = own_frame_ids()
    exclude.update({id(view), id(view.objects), id(caller_targets), id(target_map), id(stacks)})
    exclude.update(id(s) for s in stacks)
    exclude.update(id(s.frames) for s in stacks)
    # Storages held from C++ (autograd graphs, TorchScript modules, arrays viewing a
    # storage) are reached through edges gc.get_referents does not report.
    hidden = find_hidden(view.objects)
    objects = with_hidden(view.objects, hidden) if hidden else view.objects
    exclude.update({id(hidden), id(hidden.added), id(hidden.edges), id(objects)})
    holder_types = _holder_types(torch)
    key_of = _storage_key(torch)
    if any(key < 0 for key in target_map):  # private pools: their owners are the holders
        owners = owner_types()
        holder_types += owners
        key_of = _owner_or_storage_key(frozenset(owners), key_of)
    graph = scan_heap(
        objects,
        targets=target_map,
        holder_types=holder_types,
        key_of=key_of,
        root_of=env.classify,
        exclude=exclude,
        extra=env.extra,
        referents=hidden.referents if hidden else gc.get_referents,
    )
    env.bind(graph.children, graph.nodes, graph.roots)
    nn_module = getattr(sys.modules.get("torch.nn.modules.module"), "Module", None)
    forest = PathForest(graph, env, target_map, baseline_ids, nn_module, hidden)
    forest.grow(env.all_seeds())
    native = forest.adopt_unrooted(view.frozen_ids, in_child=view.in_child)
    # Storage objects torch keeps for a storage's Python identity are not holders
    # when a rooted tensor holds the same storage.
    rooted_keys = {graph.holders[h] for h in graph.holders if h in forest.claim}
    storage_type = torch.UntypedStorage
    native = [
        h
        for h in native
        if not (is_a(graph.nodes[h], storage_type) and graph.holders[h] in rooted_keys)
    ]
    notes = [
        f"searched {heap} objects and {graph.referents} references in "
        f"{graph.rounds} rounds; {len(graph.nodes)} objects lie between "
        f"{len(graph.roots)} roots and {len(graph.holders)} tensors"
    ]
    if not graph.complete:
        notes.append(
            f"the referrer search stopped after {graph.rounds} sweeps; some chains may "
            "miss a referrer (their root is still a real one)"
        )
    return assemble(
        forest,
        native,
        view=view,
        max_groups=max_groups,
        ignore=ignore,
        known=known,
        alloc_sites=alloc_sites,
        start=start,
        notes=notes,
    )


def analyze(targets: Mapping[int, int], **kw: Any) -> RetainerReport:
    """:func:`analyze_heap` over the whole heap, frozen objects included.

    Captures thread stacks and the exception being handled here first: with frozen
    objects the walk runs in a forked child, where other threads no longer run.
    """
    plain = {int(k): int(v) for k, v in targets.items()}
    if "threads" not in kw:
        kw["threads"] = capture_threads()
    if "exception" not in kw:
        kw["exception"] = sys.exc_info()[1]
    return call_with_full_heap(lambda view: analyze_heap(view, plain, **kw))

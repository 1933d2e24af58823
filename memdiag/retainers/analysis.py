"""Who holds the leaked tensors: the entry points.

:func:`analyze_heap` runs the three stages over one :class:`~memdiag.heap.view.HeapView`:

1. :mod:`~memdiag.retainers.scan`: the tensors whose storage is a target are picked
   by type (with the hidden references, one C-speed pass over the listing), then one
   chunked pass over the heap's referents finds every object between them and a
   root; arrays viewing a storage (numpy's are not gc-tracked: one more pass over
   the referents) are searched only when a holder has a reference nothing explains;
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
from memdiag.heap.hidden import HiddenRefs, find_hidden, with_hidden
from memdiag.heap.introspect import subclasses
from memdiag.heap.view import HeapView, call_with_full_heap
from memdiag.retainers.describe import is_a
from memdiag.retainers.grouping import assemble, no_tensor_group
from memdiag.retainers.known import DEFAULT_KNOWN, IgnoreRule, KnownRetention
from memdiag.retainers.model import RetainerReport
from memdiag.retainers.paths import PathForest
from memdiag.retainers.pools import owner_types, pool_of
from memdiag.retainers.roots import RootEnv, ThreadStack, capture_threads, own_frame_ids
from memdiag.retainers.scan import Subgraph, count_references, scan_heap
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

    owner_ids = frozenset(map(id, owners))  # by id: no metaclass __eq__/__hash__ runs

    def key_of(obj: object) -> int | None:
        if id(type(obj)) in owner_ids:
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


class _Search:
    """The scan over one view, with or without the search for arrays."""

    def __init__(
        self,
        view: HeapView,
        targets: dict[int, int],
        env: RootEnv,
        exclude: set[int],
        holder_types: list[type],
        key_of: Callable[[object], int | None],
    ) -> None:
        self.view = view
        self.targets = targets
        self.env = env
        self.exclude = exclude
        self.holder_types = holder_types
        self.key_of = key_of
        self.torch: Any = sys.modules.get("torch")

    def run(self, *, arrays: bool) -> tuple[Subgraph | None, HiddenRefs]:
        """The searched region; ``None`` when arrays must be searched and were not."""
        view = self.view
        exclude = self.exclude
        # Storages held from C++ (autograd graphs, TorchScript modules, arrays viewing a
        # storage) are reached through edges gc.get_referents does not report.  The same
        # pass over the heap lists the objects that may hold a target.
        hidden = find_hidden(view.objects, arrays=arrays, holder_types=self.holder_types)
        exclude.update({id(hidden), id(hidden.added), id(hidden.edges), id(hidden.holders)})
        if hidden.tracked_arrays and not arrays:
            return None, hidden
        objects = with_hidden(view.objects, hidden) if hidden else view.objects
        exclude.add(id(objects))
        holders = hidden.holders
        if hidden:
            wanted = {id(t) for t in self.holder_types}
            holders += [o for o in hidden.added if id(type(o)) in wanted]
        self.listing_refs = 1 if objects is view.objects else 2
        self.unprovable = hidden.reached_ids() if hidden else set()
        try:
            graph = scan_heap(
                objects,
                targets=self.targets,
                holders=holders,
                key_of=self.key_of,
                root_of=self.env.classify,
                exclude=exclude,
                extra=self.env.extra,
                referents=hidden.referents if hidden else gc.get_referents,
                listing_refs=self.listing_refs,
                unprovable=self.unprovable,
                held=self.env.held_references,
            )
        finally:
            holders.clear()
        return graph, hidden

    def arrays_may_hold(self, graph: Subgraph) -> bool:
        """Whether an array the gc does not see may refer to a holder: numpy is imported
        and a holder tensor has a reference the search did not record (a numpy view's
        ``.base``), or a tensor or storage more C++ owners than the Python objects found
        (an array sharing the memory through DLPack)."""
        numpy = sys.modules.get("numpy")
        if not isinstance(getattr(numpy, "ndarray", None), type):
            return False
        torch = self.torch
        storage_type = torch.UntypedStorage
        tensors: dict[int, int] = {}
        wanted: set[int] = set()
        for holder, key in graph.holders.items():
            if key < 0:
                continue
            if holder in self.unprovable:
                return True
            tensors.setdefault(key, 0)
            if not is_a(graph.nodes[holder], storage_type):
                tensors[key] += 1
                wanted.add(holder)
        counts = count_references(graph, wanted, self.env.held_references)
        own = self.listing_refs + 3  # graph.nodes, ``obj`` below, getrefcount's argument
        base = torch._C.TensorBase
        disable = torch._C.DisableTorchFunctionSubclass
        # Each view holds its base tensor from C++: per storage, the tensors' C++
        # owners beyond their own Python object must be the views among them.  A tensor
        # with C++ owners is kept by one more reference to its Python object.
        owners = dict.fromkeys(tensors, 0)
        obj: Any = None
        for holder in wanted:
            obj = graph.nodes[holder]
            try:
                with disable():
                    uses = int(base._use_count(obj))
                    view = bool(base._is_view(obj))
            except Exception:  # noqa: BLE001 - an odd subclass: search
                return True
            if sys.getrefcount(obj) - own - (uses > 1) != counts.get(holder, 0):
                return True
            owners[graph.holders[holder]] += uses - 1 - view
        del obj
        if any(owners.values()):
            return True
        use_count = getattr(torch._C, "_storage_Use_Count", None)
        if use_count is None:
            return True
        # A storage's owners: each tensor of it and its one Python storage object (which
        # the key's lookup made, if the program had not).
        for key, count in tensors.items():
            try:
                if use_count(key) != count + 1:
                    return True
            except Exception:  # noqa: BLE001
                return True
        return False


def analyze_heap(
    view: HeapView,
    targets: Mapping[int, int],
    *,
    max_groups: int = 20,
    keep_over: int | None = None,
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
    At most ``max_groups`` rooted groups are listed, plus every group that holds more
    than ``keep_over`` bytes (the check's tolerance: each of those alone is a leak).
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
            keep_over=keep_over,
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
    keep_over: int | None,
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
    holder_types = _holder_types(torch)
    key_of = _storage_key(torch)
    if any(key < 0 for key in target_map):  # private pools: their owners are the holders
        owners = owner_types()
        holder_types += owners
        key_of = _owner_or_storage_key(frozenset(owners), key_of)
    search = _Search(view, target_map, env, exclude, holder_types, key_of)
    # Arrays viewing a storage are found by one more pass over the heap's referents
    # (numpy arrays are not gc-tracked); it runs only when an array may hold a target.
    found, hidden = search.run(arrays=False)
    if found is None or search.arrays_may_hold(found):
        found = None  # its references to the heap would count as unexplained ones
        hidden.clear()
        found, hidden = search.run(arrays=True)
    graph = found
    assert graph is not None
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
        keep_over=keep_over,
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

"""Find the tensors, then everything between them and the roots, in one heap pass.

Python gives referents (``gc.get_referents``) but not referrers without a
whole-heap scan per object (``gc.get_referrers``).  So:

1. **One pass**, chunked: ``gc.get_referents(*chunk)`` for 256 objects at a time.
   A chunk whose referents meet the *watch set* (ids of tensor
   types and of every ancestor found so far) is re-read in sub-chunks of 16 and
   then object by object, recording edges into the set; tensors are found here too,
   since an instance refers to its type.  The pass runs from the end of the heap
   list to the start: references usually point from older objects to newer ones
   (containers filled after creation) or from the young generations, listed first,
   to old ones, so a referrer tends to come before its referent in the list and is
   reached after it.
2. **Sweeps**, alternating direction, re-read the referents of only the part of
   the heap passed before a new ancestor was found, until a sweep finds nothing
   new (the part is usually a few chunks: the leaked objects and their holders are
   created together).  A chain whose creation order zigzags costs one sweep per turn; the usual
   ones (modules, dicts, caches) take one or two.

The search stops at roots (module namespaces, classes, ``lru_cache`` wrappers,
frames of live threads, module objects, the current exception), so it explores
only the region between the roots and the tensors, not the whole heap that can
reach ``sys.modules``.  Memory: one pointer per reference plus small sets for that
region; no per-object Python structure for the heap, and no referent lists kept
beyond the chunk at hand (keeping them as a reverse index cost 40 bytes per heap
object, more than re-reading the few chunks a sweep needs).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Subgraph", "scan_heap"]

_CHUNK = 256
_SUB = 16
_MAX_SWEEPS = 64

RootOf = Callable[[object], "str | None"]
KeyOf = Callable[[object], "int | None"]


@dataclass
class Subgraph:
    """Everything the search found (internal, mutable, lives inside one analysis).

    ``nodes`` maps id -> object for ancestors and holders; ``roots`` id -> (kind,
    object); ``children`` parent id -> ids of referents that reach the targets;
    ``holders`` tensor or storage id -> storage key.
    """

    nodes: dict[int, object] = field(default_factory=dict)
    roots: dict[int, tuple[str, object]] = field(default_factory=dict)
    children: dict[int, set[int]] = field(default_factory=dict)
    holders: dict[int, int] = field(default_factory=dict)
    rounds: int = 0
    rescanned_chunks: int = 0
    referents: int = 0
    complete: bool = True


class _Search:
    def __init__(
        self,
        objects: Sequence[object],
        extra: Sequence[tuple[object, Callable[[], Iterable[object]]]],
        targets: Iterable[int],
        holder_types: Iterable[type],
        key_of: KeyOf,
        root_of: RootOf,
        exclude: set[int],
        referents: Callable[..., list[object]] = gc.get_referents,
    ) -> None:
        self.referents = referents
        self.objects = objects
        self.extra = extra
        self.targets = set(targets)
        self.holder_type_ids = {id(t) for t in holder_types}
        self.key_of = key_of
        self.root_of = root_of
        self.exclude = exclude
        self.graph = Subgraph()
        self.members: set[int] = set()  # ancestors whose referrers are wanted
        self.watch: set[int] = set(self.holder_type_ids)
        self.chunk_count = (len(objects) + _CHUNK - 1) // _CHUNK
        self.override: dict[int, list[object]] = {}
        # Chunks passed before the latest additions, which a sweep must look at again.
        self.low = self.chunk_count
        self.high = -1
        self.current = 0
        self.fresh: set[int] = set()  # found since the current sweep began
        self.live: set[int] = set()  # what the current sweep looks for
        self.recent: list[int] = []  # every member, in the order found
        self.complete = True
        for own in (self.members, self.watch, self.recent, self.graph.nodes, self.targets):
            exclude.add(id(own))

    def chunk(self, index: int) -> Sequence[object]:
        replaced = self.override.get(index)
        if replaced is not None:
            return replaced
        start = index * _CHUNK
        return self.objects[start : start + _CHUNK]

    def first_pass(self) -> None:
        """Backwards over the heap, chunk by chunk."""
        referents = self.referents
        objects = self.objects
        exclude = self.exclude
        watch = self.watch
        total = 0
        for index in range(self.chunk_count - 1, -1, -1):
            start = index * _CHUNK
            chunk = objects[start : start + _CHUNK]
            refs = referents(*chunk)
            if len(refs) > 64 * _CHUNK and not exclude.isdisjoint(map(id, chunk)):
                chunk = [o for o in chunk if id(o) not in exclude]
                self.override[index] = chunk
                refs = referents(*chunk)
            total += len(refs)
            if not watch.isdisjoint(map(id, refs)):
                self.current = index
                self.rescan(index, watch, backwards=True, first=True, refs=refs)
        self.graph.referents = total
        self.graph.rounds = 1
        self.scan_extra()

    def rescan(
        self,
        index: int,
        check: set[int],
        backwards: bool,
        first: bool = False,
        refs: list[object] | None = None,
    ) -> None:
        """Visit the objects of a chunk whose referents meet ``check``.

        Objects visited before a referent of theirs was found in the same chunk are
        visited again, as long as the chunk refers to what was just found.
        """
        referents = self.referents
        chunk = self.chunk(index)
        starts = range(0, len(chunk), _SUB)
        if refs is None:
            refs = referents(*chunk)
        for _ in range(_CHUNK):
            self.graph.rescanned_chunks += 1
            mark = len(self.recent)
            for start in reversed(starts) if backwards else starts:
                sub = chunk[start : start + _SUB]
                if check.isdisjoint(map(id, referents(*sub))):
                    continue
                for obj in reversed(sub) if backwards else sub:
                    self.visit(obj, referents(obj), first)
            found = set(self.recent[mark:])
            if not found or found.isdisjoint(map(id, refs)):
                return
            check = found

    def visit(self, obj: object, refs: Iterable[object], first: bool = False) -> None:
        oid = id(obj)
        if oid in self.exclude:
            return
        graph = self.graph
        if first and id(type(obj)) in self.holder_type_ids and oid not in graph.holders:
            key = self.key_of(obj)
            if key is not None and key in self.targets:
                graph.holders[oid] = key
                graph.nodes[oid] = obj
                self.add_member(oid)
        members = self.members
        hits = [rid for rid in map(id, refs) if rid in members and rid != oid]
        if not hits:
            return
        known = graph.children.get(oid)
        if known is None:
            graph.children[oid] = set(hits)
        else:
            known.update(hits)
        if oid in members or oid in graph.roots:
            return
        kind = self.root_of(obj)
        if kind is not None:
            graph.roots[oid] = (kind, obj)
            return
        graph.nodes[oid] = obj
        self.add_member(oid)

    def add_member(self, oid: int) -> None:
        self.members.add(oid)
        self.watch.add(oid)
        self.fresh.add(oid)
        self.live.add(oid)
        self.recent.append(oid)
        self.low = min(self.low, self.current)
        self.high = max(self.high, self.current)

    def scan_extra(self) -> None:
        for obj, refs in self.extra:
            try:
                self.visit(obj, list(refs()))
            except Exception:  # noqa: BLE001 - a frame may finish while we look
                continue

    def sweeps(self) -> None:
        """Alternate directions over the part passed before the last additions."""
        backwards = False
        while self.fresh and self.graph.rounds < _MAX_SWEEPS:
            self.graph.rounds += 1
            # The first pass ran backwards: additions at chunk c were not looked for in
            # chunks after c; a forwards sweep then misses chunks before its additions.
            if backwards:
                span = range(self.high, -1, -1)
            else:
                span = range(self.low, self.chunk_count)
            self.low, self.high = self.chunk_count, -1
            self.live, self.fresh = self.fresh, set()
            live = self.live
            referents = self.referents
            for index in span:
                refs = referents(*self.chunk(index))
                if not live.isdisjoint(map(id, refs)):
                    self.current = index
                    self.rescan(index, self.watch, backwards, refs=refs)
                del refs
            self.current = 0 if backwards else self.chunk_count - 1
            self.scan_extra()
            backwards = not backwards
        self.live = set()
        self.complete = not self.fresh


def scan_heap(
    objects: Sequence[object],
    *,
    targets: Iterable[int],
    holder_types: Iterable[type],
    key_of: KeyOf,
    root_of: RootOf,
    exclude: set[int],
    extra: Sequence[tuple[object, Callable[[], Iterable[object]]]] = (),
    referents: Callable[..., list[object]] = gc.get_referents,
) -> Subgraph:
    """Holders of ``targets`` and every object between them and a root.

    ``objects`` is the heap; ``extra`` are (object, referents function) pairs for roots
    that the heap listing lacks or whose referents gc does not show (executing
    frames); ``key_of`` gives a holder's storage key (``None`` if it has none);
    ``root_of`` a root kind or ``None``; ``exclude`` ids never to treat as referrers;
    ``referents`` stands in for ``gc.get_referents`` (it adds references held from
    C++, see :mod:`memdiag.heap.hidden`).
    """
    search = _Search(objects, extra, targets, holder_types, key_of, root_of, exclude, referents)
    exclude.add(id(search))
    try:
        search.first_pass()
        search.sweeps()
        search.graph.complete = search.complete
        return search.graph
    finally:
        search.override.clear()

"""Everything between the leaked tensors and the roots, in one heap pass.

Python gives referents (``gc.get_referents``) but not referrers without a
whole-heap scan per object (``gc.get_referrers``).  So:

0. The **holders** (tensors, storages, pool owners whose storage is a target) are
   known before the pass: the caller picks them by type in its pass over the heap
   listing (:func:`memdiag.heap.hidden.find_hidden`), so every referrer of a holder
   is found in the pass, wherever it lies.
1. **One pass**, chunked: ``gc.get_referents(*chunk)`` for 256 objects at a time.
   A chunk whose referents meet the *members* (the holders and every ancestor found
   so far) is re-read in sub-chunks of 16 and then object by object, recording edges
   into the set.  The pass runs from the end of the heap list to the start:
   references usually point from older objects to newer ones (containers filled
   after creation) or from the young generations, listed first, to old ones, so a
   referrer tends to come before its referent in the list and is reached after it.
2. **Proof**: an ancestor found at chunk c may have referrers in the chunks the pass
   had already left.  Its reference count tells: when the references recorded into
   it (counted in ``gc.get_referents`` of its referrers) plus this analysis' own
   are all of them, nothing is left to find.  Usually every ancestor is accounted
   for and the pass was the whole search.
3. **Sweeps**, alternating direction, re-read the referents of only the part of the
   heap passed before an ancestor that is not accounted for (a reference held from
   C, or a referrer the pass left behind) was found, until a sweep finds nothing
   new.  A chain whose creation order zigzags costs one sweep per turn.

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
import sys
from array import array
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
        key_of: KeyOf,
        root_of: RootOf,
        exclude: set[int],
        referents: Callable[..., list[object]] = gc.get_referents,
        *,
        listing_refs: int = 1,
        unprovable: set[int] | None = None,
        held: Callable[[object], list[object] | None] = lambda obj: None,
    ) -> None:
        self.referents = referents
        self.objects = objects
        self.extra = extra
        self.targets = set(targets)
        self.key_of = key_of
        self.root_of = root_of
        self.exclude = exclude
        self.graph = Subgraph()
        self.members: set[int] = set()  # holders and ancestors: their referrers are wanted
        self.chunk_count = (len(objects) + _CHUNK - 1) // _CHUNK
        self.override: dict[int, list[object]] = {}
        self.current = 0
        self.fresh: set[int] = set()  # found since the current sweep began
        self.live: set[int] = set()  # what the current sweep looks for
        self.recent: list[int] = []  # every member, in the order found
        self.found_at = array("q")  # the chunk each member of ``recent`` was found in
        self.listing_refs = listing_refs
        self.held = held
        self.unprovable = unprovable if unprovable is not None else set()
        self.complete = True
        for own in (self.members, self.recent, self.graph.nodes, self.targets):
            exclude.add(id(own))

    def chunk(self, index: int) -> Sequence[object]:
        replaced = self.override.get(index)
        if replaced is not None:
            return replaced
        start = index * _CHUNK
        return self.objects[start : start + _CHUNK]

    def seed(self, holders: Sequence[object]) -> None:
        """The holders, known before the pass: every referrer of theirs is found in it.

        ``holders`` are in heap order; they are taken from the end, in the order a
        backwards pass meets them."""
        graph = self.graph
        for obj in reversed(holders):
            oid = id(obj)
            if oid in self.exclude or oid in graph.holders:
                continue
            key = self.key_of(obj)
            if key is not None and key in self.targets:
                graph.holders[oid] = key
                graph.nodes[oid] = obj
                self.add_member(oid, -1)
        self.fresh = set()  # complete after the first pass

    def first_pass(self) -> None:
        """Backwards over the heap, chunk by chunk."""
        referents = self.referents
        objects = self.objects
        exclude = self.exclude
        members = self.members
        total = 0
        for index in range(self.chunk_count - 1, -1, -1) if members else ():
            start = index * _CHUNK
            chunk = objects[start : start + _CHUNK]
            refs = referents(*chunk)
            if len(refs) > 64 * _CHUNK and not exclude.isdisjoint(map(id, chunk)):
                chunk = [o for o in chunk if id(o) not in exclude]
                self.override[index] = chunk
                self.unprovable.update(map(id, chunk))
                refs = referents(*chunk)
            total += len(refs)
            if not members.isdisjoint(map(id, refs)):
                self.current = index
                self.rescan(index, members, backwards=True, refs=refs)
        self.graph.referents = total
        self.graph.rounds = 1
        self.scan_extra()

    def rescan(
        self,
        index: int,
        check: set[int],
        backwards: bool,
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
                    self.visit(obj, referents(obj))
            found = set(self.recent[mark:])
            if not found or found.isdisjoint(map(id, refs)):
                return
            check = found

    def visit(self, obj: object, refs: Iterable[object]) -> None:
        oid = id(obj)
        if oid in self.exclude:
            return
        graph = self.graph
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
        self.add_member(oid, self.current)

    def add_member(self, oid: int, chunk: int) -> None:
        self.members.add(oid)
        self.fresh.add(oid)
        self.live.add(oid)
        self.recent.append(oid)
        self.found_at.append(chunk)

    def scan_extra(self) -> None:
        for obj, refs in self.extra:
            try:
                self.visit(obj, list(refs()))
            except Exception:  # noqa: BLE001 - a frame may finish while we look
                continue

    def unexplained(self, fresh: set[int]) -> set[int]:
        """The members of ``fresh`` whose referrers may not all be found yet.

        A member is complete when the references the search recorded into it, counted
        with ``gc.get_referents``, plus this analysis' own (the heap listing, the
        node table, the caller's local and argument) are its whole reference count:
        then no referrer is left to find.  Anything else, a reference held from C, by a
        hidden edge, by the program's other threads, counts as not complete.
        """
        todo = fresh - self.unprovable
        out = fresh & self.unprovable
        if not todo:
            return out
        graph = self.graph
        counts = count_references(graph, todo, self.held)
        own = self.listing_refs + 3  # graph.nodes, ``obj`` below, getrefcount's argument
        nodes = graph.nodes
        for oid in todo:
            obj = nodes[oid]
            if sys.getrefcount(obj) - own != counts.get(oid, -1):
                out.add(oid)
        del obj
        return out

    def sweeps(self) -> None:
        """Alternate directions over the part passed before the last additions that
        may still have referrers to find."""
        backwards = False
        mark = 0
        while self.fresh and self.graph.rounds < _MAX_SWEEPS:
            self.live = live = self.unexplained(self.fresh)
            self.fresh = set()
            first = len(self.recent)
            where = [
                at
                for oid, at in zip(self.recent[mark:], self.found_at[mark:], strict=True)
                if oid in live
            ]
            mark = first
            if not where:
                continue
            self.graph.rounds += 1
            # The first pass ran backwards: additions at chunk c were not looked for in
            # chunks after c; a forwards sweep then misses chunks before its additions.
            if backwards:
                span = range(max(where), -1, -1)
            else:
                span = range(max(min(where), 0), self.chunk_count)
            referents = self.referents
            for index in span:
                refs = referents(*self.chunk(index))
                if not live.isdisjoint(map(id, refs)):
                    self.current = index
                    self.rescan(index, self.members, backwards, refs=refs)
                del refs
            self.current = 0 if backwards else self.chunk_count - 1
            self.scan_extra()
            backwards = not backwards
        self.live = set()
        self.complete = not self.fresh


def count_references(
    graph: Subgraph,
    wanted: set[int],
    held: Callable[[object], list[object] | None] = lambda obj: None,
) -> dict[int, int]:
    """How many references the recorded edges make into each of ``wanted``, counted
    in ``gc.get_referents`` (a list holding an object twice refers to it twice), or in
    ``held(parent)`` where it is not ``None`` (executing frames, whose locals the gc
    does not show)."""
    counts: dict[int, int] = {}
    nodes = graph.nodes
    roots = graph.roots
    for parent, kids in graph.children.items():
        if kids.isdisjoint(wanted):
            continue
        obj = nodes.get(parent)
        if obj is None:
            root = roots.get(parent)
            if root is None:
                continue
            obj = root[1]
        refs = held(obj)
        for rid in map(id, gc.get_referents(obj) if refs is None else refs):
            if rid in kids and rid in wanted:
                counts[rid] = counts.get(rid, 0) + 1
    return counts


def scan_heap(
    objects: Sequence[object],
    *,
    targets: Iterable[int],
    holders: Sequence[object],
    key_of: KeyOf,
    root_of: RootOf,
    exclude: set[int],
    extra: Sequence[tuple[object, Callable[[], Iterable[object]]]] = (),
    referents: Callable[..., list[object]] = gc.get_referents,
    listing_refs: int = 1,
    unprovable: set[int] | None = None,
    held: Callable[[object], list[object] | None] = lambda obj: None,
) -> Subgraph:
    """Holders of ``targets`` and every object between them and a root.

    ``objects`` is the heap; ``holders`` the objects of ``objects`` that may hold a
    target (tensors, storages, pool owners; in heap order); ``extra`` are (object,
    referents function) pairs for roots that the heap listing lacks or whose referents
    gc does not show (executing frames); ``key_of`` gives a holder's storage key
    (``None`` if it has none); ``root_of`` a root kind or ``None``; ``exclude`` ids
    never to treat as referrers; ``referents`` stands in for ``gc.get_referents`` (it
    adds references held from C++, see :mod:`memdiag.heap.hidden`).
    ``listing_refs`` is how many lists of the caller's hold each object of ``objects``
    (the heap listing, and ``objects`` when it is a copy), ``unprovable`` ids of objects
    whose references the caller holds otherwise (see :meth:`_Search.unexplained`);
    ``held`` the references of executing frames (see :func:`count_references`).
    """
    search = _Search(
        objects,
        extra,
        targets,
        key_of,
        root_of,
        exclude,
        referents,
        listing_refs=listing_refs,
        unprovable=unprovable,
        held=held,
    )
    exclude.add(id(search))
    try:
        search.seed(holders)
        search.first_pass()
        search.sweeps()
        search.graph.complete = search.complete
        return search.graph
    finally:
        search.override.clear()

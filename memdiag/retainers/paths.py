"""One path per tensor: the preferred-root shortest-path forest, suspects and chains.

A breadth-first search from the roots' named references (*seeds*), all seeds of one
root kind before the next, reaches each object first from the most preferred root
and, within it, by a shortest path.  Children are visited in the order their parent
holds them (``gc.get_referents`` order: insertion, index, attribute order), so paths
and signatures do not depend on addresses.

Walking down a path, modules, classes, functions, code, caches and the builtin
containers hanging off them are long-lived state; the first object that is none of
these (an instance, a bound method, a tensor) is the *suspect*: it should have died
with the engine, and the edge into it is the reference to cut.  Objects whose id is
in an optional baseline snapshot count as long-lived.

Tensors no root reaches get a pseudo root: the topmost object above them (one with no
referrer in the region, else the farthest one of the cycle), named after the
gc-frozen generation when the cycle holds frozen objects, else an unreachable cycle.
"""

from __future__ import annotations

import gc
import re
import sys
import types
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import groupby

from memdiag.heap.hidden import HiddenRefs
from memdiag.retainers.describe import (
    HopLabeller,
    TensorInfo,
    frame_text,
    is_a,
    node_text,
    qualname,
    tensor_info,
    type_name,
)
from memdiag.retainers.outside import OutsideHolders
from memdiag.retainers.roots import RootEnv, Seed
from memdiag.retainers.scan import Subgraph
from memdiag.values.readings import pool_of_key
from memdiag.values.retainers import ROOT_KINDS, Edge

__all__ = ["CHAIN_HEAD", "CHAIN_TAIL", "NATIVE_ROOT", "PathForest", "normalise_label"]

CHAIN_HEAD = 12
"""Hops shown from the root's end of a long chain."""
CHAIN_TAIL = 8
"""Hops shown from the tensor's end of a long chain."""

_NOTABLE = (
    types.MethodType,
    types.FunctionType,
    types.FrameType,
    types.GeneratorType,
    types.CoroutineType,
    types.AsyncGeneratorType,
    types.ModuleType,
    types.BuiltinMethodType,
    type,
)
_PLAIN_AT_ROOT = (types.FunctionType, types.ModuleType, type)
_FOLDED = (dict, list, tuple, set, frozenset, types.CellType, types.TracebackType)
_LONG_LIVED = (
    types.ModuleType,
    types.FunctionType,
    types.CodeType,
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    property,
    staticmethod,
    classmethod,
)
_STRUCTURAL = (dict, list, tuple, set, frozenset, types.CellType, types.MappingProxyType)
# Membership by id(): ``tp in (dict, ...)`` runs a metaclass' __eq__ (the program's code).
_LONG_LIVED_IDS = frozenset(id(t) for t in _LONG_LIVED)
_STRUCTURAL_IDS = frozenset(id(t) for t in _STRUCTURAL)


def _through_globals(parent: object, child: object) -> bool:
    """``parent`` reaches ``child`` only as its module's namespace: a function's
    ``__globals__`` or a frame's ``f_globals`` / ``f_builtins``."""
    if type(parent) is types.FunctionType:
        return parent.__globals__ is child
    if type(parent) is types.FrameType:
        return parent.f_globals is child or parent.f_builtins is child
    return False


_INDEX = re.compile(r"\[[^\]]*\]|\(key [^)]*\)")
_LINE = re.compile(r":\d+\)")
PSEUDO_KINDS = ("frozen", "unreachable", "native")
NATIVE_ROOT = "native code"
"""Root name of objects nothing in the Python heap refers to (held from C)."""


def normalise_label(label: str) -> str:
    """A label's shape: keys and indices abstracted, line numbers dropped."""
    return _LINE.sub(")", _INDEX.sub("[*]", label))


def _logging_types() -> tuple[type, ...]:
    """logging's loggers, placeholders and manager, if the program imported logging."""
    logging = sys.modules.get("logging")
    found = (getattr(logging, n, None) for n in ("Logger", "PlaceHolder", "Manager"))
    return tuple(t for t in found if isinstance(t, type))


class PathForest:
    """The search region turned into one path per object, from its preferred root."""

    def __init__(
        self,
        graph: Subgraph,
        env: RootEnv,
        targets: Mapping[int, int],
        baseline_ids: Iterable[int] | None,
        nn_module: type | None,
        hidden: HiddenRefs | None = None,
    ) -> None:
        self.referents = hidden.referents if hidden else gc.get_referents
        self.named = hidden.named if hidden else set()
        self.graph = graph
        self.env = env
        self.targets = targets
        self.baseline = frozenset(baseline_ids or ())
        self.labeller = HopLabeller(nn_module, hidden)
        self.seeds: list[Seed] = []
        self.claim: dict[int, int] = {}  # node -> seed index
        self.order: dict[int, int] = {}  # node -> visiting order
        self.tree_parent: dict[int, int | None] = {}
        self.long_lived: dict[int, bool] = {}
        self.suspect: dict[int, int | None] = {}
        self.depth: dict[int, int] = {}
        self.shape: dict[int, int] = {}
        """node -> shape id; a shape is (parent shape id, label shape, type), interned so
        a chain of any length costs one small entry per node."""
        self._shapes: list[tuple[int, str, str]] = []
        self._shape_ids: dict[tuple[int, str, str], int] = {}
        self.role: dict[int, str] = {}
        self._parents: dict[int, list[int]] | None = None
        self._infos: dict[int, TensorInfo] = {}
        self._logging = _logging_types()

    # -- building ----------------------------------------------------------------
    def grow(self, seeds: list[Seed]) -> None:
        """Claim every object reachable from the seeds, one root kind at a time."""
        self.seeds = list(seeds)
        nodes = self.graph.nodes
        for _, batch in groupby(range(len(self.seeds)), key=lambda i: self.seeds[i].rank):
            queue: deque[int] = deque()
            for index in batch:
                child = self.seeds[index].child_id
                if child in nodes and child not in self.claim:
                    self._visit(child, index, None)
                    queue.append(child)
            self._expand(queue)

    def _expand(self, queue: deque[int]) -> None:
        while queue:
            node = queue.popleft()
            for child in self.ordered_children(node):
                if child not in self.claim:
                    self._visit(child, self.claim[node], node)
                    queue.append(child)

    def ordered_children(self, node: int) -> list[int]:
        wanted = self.graph.children.get(node)
        obj = self.graph.nodes.get(node)
        if not wanted or obj is None:
            return []
        out: list[int] = []
        for ref in self.referents(obj):
            rid = id(ref)
            if rid in wanted and rid in self.graph.nodes and rid not in out:
                out.append(rid)
        return out

    def _is_long_lived(self, obj: object, parent_long_lived: bool) -> bool:
        if id(obj) in self.baseline:
            return True
        tp = type(obj)
        if id(tp) in _LONG_LIVED_IDS or issubclass(tp, type) or tp is self.env.lru_type:
            return True
        if issubclass(tp, self._logging):
            return True  # logging keeps every logger (and its manager) for good
        return parent_long_lived and id(tp) in _STRUCTURAL_IDS

    def _visit(self, node: int, seed_index: int, parent: int | None) -> None:
        obj = self.graph.nodes[node]
        self.claim[node] = seed_index
        self.order[node] = len(self.order)
        self.tree_parent[node] = parent
        self.depth[node] = 0 if parent is None else self.depth[parent] + 1
        pseudo = self.seeds[seed_index].kind in PSEUDO_KINDS
        parent_ll = (not pseudo) if parent is None else self.long_lived[parent]
        self.long_lived[node] = long_lived = self._is_long_lived(obj, parent_ll)
        above = None if parent is None else self.suspect[parent]
        if above is not None and parent is not None:
            self.suspect[node] = above
            self.shape[node] = self.shape[parent]
            return
        label, role = self._label(node)
        self.role[node] = role
        self.suspect[node] = None if long_lived else node
        key = (
            -1 if parent is None else self.shape[parent],
            normalise_label(label),
            type_name(type(obj)),
        )
        shape = self._shape_ids.get(key)
        if shape is None:
            shape = self._shape_ids[key] = len(self._shapes)
            self._shapes.append(key)
        self.shape[node] = shape

    def shape_parts(self, shape: int) -> tuple[str, ...]:
        """The labels and types of an interned shape, from the root down."""
        parts: list[str] = []
        while shape >= 0:
            shape, label, kind = self._shapes[shape]
            parts += (kind, label)
        parts.reverse()
        return tuple(parts)

    def _label(self, node: int) -> tuple[str, str]:
        parent = self.tree_parent[node]
        seed = self.seeds[self.claim[node]]
        if parent is None:
            return seed.label, seed.role
        grand = self.tree_parent[parent]
        owner = seed.owner if grand is None else self.graph.nodes[grand]
        nodes = self.graph.nodes
        return self.labeller.hop(nodes[parent], self.role[parent], nodes[node], owner)

    def adopt_unrooted(self, frozen_ids: frozenset[int], *, in_child: bool = False) -> list[int]:
        """Give holders no root reaches a root: the holder outside the heap that keeps
        the topmost object alive when it can be named (atexit, a contextvars context, a
        signal or trace hook), else native code when nothing in the heap refers to it,
        else the gc-frozen generation or an unreachable cycle.  Returns the holders
        nothing refers to."""
        native: list[int] = []
        parents = self.parents()
        nodes = self.graph.nodes

        def unreferenced() -> list[object]:
            return [
                obj
                for node, obj in nodes.items()
                if (type(obj) is tuple or type(obj) is dict)
                and not any(p in nodes for p in parents.get(node, ()))
            ]

        outside = OutsideHolders(in_child=in_child, unreferenced=unreferenced)
        holders = [h for h in self.graph.holders if h not in self.claim]
        holders.sort(
            key=lambda h: (-self.targets.get(self.graph.holders[h], 0), qualname(type(nodes[h])))
        )
        for holder in holders:
            if holder in self.claim:
                continue
            if not any(p in nodes for p in parents.get(holder, ())):
                native.append(holder)
                continue
            distance = {holder: 0}
            queue = deque([holder])
            while queue:
                node = queue.popleft()
                for parent in parents.get(node, ()):
                    if parent in nodes and parent not in distance and parent not in self.claim:
                        distance[parent] = distance[node] + 1
                        queue.append(parent)
            sources = [n for n in distance if not any(p in distance for p in parents.get(n, ()))]
            top = max(
                sources or list(distance),
                key=lambda n: (distance[n], qualname(type(nodes[n]))),
            )
            held = outside.name(nodes[top], distance) if sources else None
            if held is not None:
                start = id(held.start)
                seed = Seed(
                    ROOT_KINDS.index("registry"),
                    "registry",
                    held.name,
                    held.signature_name,
                    held.label,
                    "plain",
                    top,
                    start,
                    nodes[top],
                )
            else:
                start = top
                if any(n in frozen_ids for n in distance):
                    kind, name = "frozen", "gc.freeze()"
                elif sources:  # nothing in the heap refers to it, yet it is alive
                    kind, name = "native", NATIVE_ROOT
                else:
                    kind, name = "unreachable", "unreachable cycle"
                signature_name = f"{kind}:{type_name(type(nodes[top]))}"
                seed = Seed(
                    ROOT_KINDS.index(kind), kind, name, signature_name, "", "plain", top, top, None
                )
            self.seeds.append(seed)
            self._visit(start, len(self.seeds) - 1, None)
            self._expand(deque([start]))
        return native

    # -- reading -----------------------------------------------------------------
    def path(self, node: int) -> list[int]:
        out = [node]
        parent = self.tree_parent[node]
        while parent is not None:
            out.append(parent)
            parent = self.tree_parent[parent]
        out.reverse()
        return out

    def parents(self) -> dict[int, list[int]]:
        if self._parents is None:
            parents: dict[int, list[int]] = {}
            for parent, kids in self.graph.children.items():
                for kid in kids:
                    parents.setdefault(kid, []).append(parent)
            self._parents = parents
        return self._parents

    def info(self, holder: int) -> TensorInfo:
        found = self._infos.get(holder)
        if found is None:
            key = self.graph.holders.get(holder, 0)
            obj = self.graph.nodes[holder]
            if key < 0:  # the owner of a private pool, not a tensor
                pool = pool_of_key(key) or (0, 0)
                where = f"{qualname(type(obj))} owning private pool ({pool[0]}, {pool[1]})"
                found = TensorInfo(
                    qualname(type(obj)), where, "bytes", "", self.targets.get(key, 0)
                )
            else:
                found = tensor_info(obj)
            self._infos[holder] = found
        return found

    def common_length(self, holders: Sequence[int]) -> int:
        """How many nodes, from the root down, the paths to ``holders`` share: the depth
        of their lowest common ancestor plus one, found by walking up from each holder
        only as far as the ancestor (never building the paths)."""
        parent = self.tree_parent
        depth = self.depth
        common: int | None = holders[0]
        for holder in holders[1:]:
            a: int | None = common
            b: int | None = holder
            while a is not None and b is not None and depth[a] > depth[b]:
                a = parent[a]
            while a is not None and b is not None and depth[b] > depth[a]:
                b = parent[b]
            while a is not None and b is not None and a != b:
                a, b = parent[a], parent[b]
            common = a if a is not None and a == b else None
            if common is None:
                return 0
        return 0 if common is None else depth[common] + 1

    def chain(
        self, holder: int, *, head: int = CHAIN_HEAD, tail: int = CHAIN_TAIL
    ) -> tuple[tuple[Edge, ...], list[int], dict[int, int]]:
        """The labelled hops from the holder's root down to it, the path's node ids,
        and where each shown hop sits in the path (path index -> chain index).

        A path longer than ``head + tail`` hops shows its first ``head`` and last
        ``tail`` hops, and the suspect with its neighbours, with one
        ``... N more links ...`` hop for each gap: the output stays bounded however
        long the chain (labels are still computed along the whole path: linear)."""
        nodes = self.path(holder)
        count = len(nodes)
        shown: set[int] | None = None
        if count > head + tail + 1:
            shown = set(range(head)) | set(range(count - tail, count))
            suspect = self.suspect.get(holder)
            if suspect is not None and suspect in self.depth:
                at = self.depth[suspect]
                shown.update(i for i in (at - 1, at, at + 1) if 0 <= i < count)
        seed = self.seeds[self.claim[holder]]
        pseudo = seed.kind in PSEUDO_KINDS
        objects = self.graph.nodes
        edges: list[Edge] = []
        where: dict[int, int] = {}
        role = seed.role
        skipped = 0
        for position, node in enumerate(nodes):
            obj = objects[node]
            if position == 0:
                label = seed.label
            else:
                owner = seed.owner if position == 1 else objects[nodes[position - 2]]
                label, role = self.labeller.hop(objects[nodes[position - 1]], role, obj, owner)
            if shown is not None and position not in shown:
                skipped += 1
                continue
            if skipped:
                edges.append(Edge(f"... {skipped:,} more links ...", "", ""))
                skipped = 0
            if position == count - 1:
                storage = self.targets.get(self.graph.holders.get(holder, 0), 0)
                text = self.info(holder).short(storage)
            elif node in self.named:  # an autograd node or C++ module: its type says it
                text = qualname(type(obj))
            elif position == 0 and not pseudo and is_a(obj, _PLAIN_AT_ROOT):
                text = ""
            elif is_a(obj, _NOTABLE):
                text = frame_text(obj) if type(obj) is types.FrameType else node_text(obj)
            elif is_a(obj, _FOLDED):
                text = ""
            elif position == 0:
                text = qualname(type(obj)) if pseudo else ""
            elif label.startswith((".", "[")):
                text = ""
            else:
                text = node_text(obj)
            where[position] = len(edges)
            edges.append(Edge(label, type_name(type(obj)), text, self.long_lived.get(node, False)))
        return tuple(edges), nodes, where

    def other_roots(self, node: int, own: str) -> tuple[str, ...]:
        """Names of other roots that also reach ``node`` (at most five)."""
        parents = self.parents()
        roots = self.graph.roots
        seen = {node}
        queue = deque([node])
        nodes = self.graph.nodes
        while queue:
            current = queue.popleft()
            for parent in parents.get(current, ()):
                if parent not in seen and parent not in roots:
                    if _through_globals(nodes.get(parent), nodes.get(current)):
                        continue  # a function of the module is no holder of its globals
                    seen.add(parent)
                    # Every logger reaches every other through logging's manager: the
                    # roots above a logger are not roots of what is stored on it.
                    if not issubclass(type(self.graph.nodes.get(parent)), self._logging):
                        queue.append(parent)
        names = {s.name for s in self.seeds if s.child_id in seen and s.kind not in PSEUDO_KINDS}
        names.discard(own)
        return tuple(sorted(names)[:5])

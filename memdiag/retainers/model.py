"""The findings of the retainer analysis: frozen, picklable, JSON-safe value types.

A :class:`RetainerReport` lists :class:`RetainerGroup` findings.  Each group is one
retainer (a named root and the shape of the path from it into objects that should
have died), the bytes and tensors it keeps alive, and one example chain of
:class:`Edge` hops from the root down to a tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from memdiag.values.units import format_bytes

__all__ = ["ROOT_KINDS", "Edge", "RetainerGroup", "RetainerReport"]

#: Root kinds in order of preference; ``frozen`` and below hold what no Python root reaches.
ROOT_KINDS = (
    "module",
    "class",
    "lru_cache",
    "thread",
    "exception",
    "registry",
    "frozen",
    "unreachable",
    "native",
)

_PATH_LABEL = re.compile(r"^(?!\.\.\. )[.\[]")  # ``... N more links ...`` is no path


def _is_path(label: str) -> bool:
    return bool(_PATH_LABEL.match(label))


@dataclass(frozen=True)
class Edge:
    """One hop of a chain: how the previous object refers to the next one.

    ``label`` says how it is referred to (``.model``, ``['kv_cache']``, ``[3]``,
    ``cache key``, ``local 't'``; empty when folded away or obvious), ``type_name``
    is the qualified type of the object reached, ``node`` what to print for it (empty
    when the label already says enough), ``long_lived`` whether it looks like state
    that outlives an engine (modules, classes, functions, caches and their containers).
    """

    label: str
    type_name: str
    node: str = ""
    long_lived: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "type_name": self.type_name,
            "node": self.node,
            "long_lived": self.long_lived,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Edge:
        return cls(
            label=str(data["label"]),
            type_name=str(data["type_name"]),
            node=str(data.get("node", "")),
            long_lived=bool(data.get("long_lived", False)),
        )


def render_chain(root: str, edges: tuple[Edge, ...], *, end: int | None = None) -> str:
    """``root -> label -> node -> .a.b[3].c (cpu, 1.0 MiB)``; attribute paths run together."""
    segments = [root]
    path_open = False
    shown = edges if end is None else edges[:end]
    last = len(edges) - 1
    for index, edge in enumerate(shown):
        if edge.label:
            if _is_path(edge.label) and path_open:
                segments[-1] += edge.label
            else:
                segments.append(edge.label)
            path_open = _is_path(edge.label)
        if edge.node:
            if index == last and end is None:
                segments[-1] += f" ({edge.node})"
            else:
                segments.append(edge.node)
                path_open = False
    return " -> ".join(segments)


@dataclass(frozen=True)
class RetainerGroup:
    """One retainer and everything it keeps alive.

    - ``root_kind``: one of :data:`ROOT_KINDS`; ``root_name`` a greppable name such as
      ``pkg.mod.CACHE``, ``mod.Class.attr``, ``lru_cache of mod.fn`` or
      ``thread 'worker' in fn (file.py:12)``.
    - ``chain``: the hops from the root to ``example_tensor``; the first
      ``common_length`` hops are shared by every tensor of the group.
    - ``suspect_index``: index in ``chain`` of the first object that should have
      died (the edge where long-lived state holds on to it), ``None`` if unknown.
    - ``retained_bytes`` / ``storage_count``: distinct storages, each counted in one
      group only; ``tensor_count``: tensor objects (views count separately).
    - ``signature``: short hash of the chain's shape, stable across runs.
    - ``frozen``: some object on the path was frozen by ``gc.freeze()``.
    - ``known``: the name of the framework retention this matches, if any.
    """

    root_kind: str
    root_name: str
    chain: tuple[Edge, ...]
    suspect_index: int | None
    retained_bytes: int
    tensor_count: int
    storage_count: int
    signature: str
    frozen: bool = False
    known: str | None = None
    example_tensor: str = ""
    storage_keys: tuple[int, ...] = ()
    common_length: int = 0
    note: str = ""
    alloc_site: str | None = None
    other_roots: tuple[str, ...] = field(default=())

    def chain_text(self) -> str:
        """The example chain on one line, from the root's name to the tensor."""
        return render_chain(self.root_name, self.chain)

    def retainer_text(self) -> str:
        """The shared part of the chain: root down to the object that dominates the group."""
        return render_chain(self.root_name, self.chain, end=self.common_length)

    def suspect_text(self) -> str:
        """The reference to cut: ``cache key -> bound method Model.forward``."""
        if self.suspect_index is None:
            return ""
        edge = self.chain[self.suspect_index]
        before = self.chain[self.suspect_index - 1] if self.suspect_index else None
        source = (before.node or before.label) if before else self.root_name
        target = edge.node or edge.type_name.rsplit(".", 1)[-1]
        hop = edge.label or "refers to"
        return f"{source} -> {hop} -> {target}" if edge.label else f"{source} -> {target}"

    def summary(self) -> str:
        """One sentence with the numbers, for messages."""
        what = (
            f"{format_bytes(self.retained_bytes)} in {self.tensor_count} "
            f"tensor{'s' if self.tensor_count != 1 else ''} "
            f"({self.storage_count} storage{'s' if self.storage_count != 1 else ''})"
        )
        text = f"{what} kept alive by {self.chain_text()}"
        if self.known:
            text += f" [known: {self.known}]"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "root_kind": self.root_kind,
            "root_name": self.root_name,
            "chain": [edge.to_json() for edge in self.chain],
            "suspect_index": self.suspect_index,
            "retained_bytes": self.retained_bytes,
            "tensor_count": self.tensor_count,
            "storage_count": self.storage_count,
            "signature": self.signature,
            "frozen": self.frozen,
            "known": self.known,
            "example_tensor": self.example_tensor,
            "storage_keys": list(self.storage_keys),
            "common_length": self.common_length,
            "note": self.note,
            "alloc_site": self.alloc_site,
            "other_roots": list(self.other_roots),
            "chain_text": self.chain_text(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetainerGroup:
        suspect = data.get("suspect_index")
        known = data.get("known")
        site = data.get("alloc_site")
        return cls(
            root_kind=str(data["root_kind"]),
            root_name=str(data["root_name"]),
            chain=tuple(Edge.from_json(e) for e in data.get("chain", ())),
            suspect_index=None if suspect is None else int(suspect),
            retained_bytes=int(data["retained_bytes"]),
            tensor_count=int(data["tensor_count"]),
            storage_count=int(data["storage_count"]),
            signature=str(data["signature"]),
            frozen=bool(data.get("frozen", False)),
            known=None if known is None else str(known),
            example_tensor=str(data.get("example_tensor", "")),
            storage_keys=tuple(int(k) for k in data.get("storage_keys", ())),
            common_length=int(data.get("common_length", 0)),
            note=str(data.get("note", "")),
            alloc_site=None if site is None else str(site),
            other_roots=tuple(str(r) for r in data.get("other_roots", ())),
        )


@dataclass(frozen=True)
class RetainerReport:
    """Who holds the leaked storages.

    ``groups`` are rooted findings, largest first (known framework retention included,
    flagged by ``known``); ``unrooted`` are storages no Python root reaches (garbage
    cycles, tensors held from native code, storages without a Python tensor);
    ``ignored`` matched an :class:`~memdiag.retainers.IgnoreRule`.
    """

    groups: tuple[RetainerGroup, ...]
    unrooted: tuple[RetainerGroup, ...] = ()
    ignored: tuple[RetainerGroup, ...] = ()
    heap_objects: int = 0
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    target_storages: int = 0
    target_bytes: int = 0

    @property
    def blamed(self) -> tuple[RetainerGroup, ...]:
        """Findings to act on: rooted or unrooted, neither known nor ignored."""
        return tuple(g for g in self.groups + self.unrooted if g.known is None)

    @property
    def explained_bytes(self) -> int:
        return sum(g.retained_bytes for g in self.groups + self.unrooted + self.ignored)

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [g.to_json() for g in self.groups],
            "unrooted": [g.to_json() for g in self.unrooted],
            "ignored": [g.to_json() for g in self.ignored],
            "heap_objects": self.heap_objects,
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
            "target_storages": self.target_storages,
            "target_bytes": self.target_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetainerReport:
        return cls(
            groups=tuple(RetainerGroup.from_json(g) for g in data.get("groups", ())),
            unrooted=tuple(RetainerGroup.from_json(g) for g in data.get("unrooted", ())),
            ignored=tuple(RetainerGroup.from_json(g) for g in data.get("ignored", ())),
            heap_objects=int(data.get("heap_objects", 0)),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            notes=tuple(str(n) for n in data.get("notes", ())),
            target_storages=int(data.get("target_storages", 0)),
            target_bytes=int(data.get("target_bytes", 0)),
        )

    def text(self) -> str:
        """Plain lines, one per finding (renderers live in ``memdiag.report``)."""
        lines = [g.summary() for g in self.groups + self.unrooted]
        lines += [f"ignored: {g.summary()}" for g in self.ignored]
        lines += self.notes
        return "\n".join(lines)

"""Retainer groups: who keeps leaked storages alive, as frozen, JSON-safe value types.

A :class:`RetainerGroup` is one retainer (a named root and the shape of the path from
it into objects that should have died), the bytes and tensors it keeps alive, and one
example chain of :class:`Edge` hops from the root down to a tensor.  Findings carry
them (:attr:`memdiag.values.findings.Finding.retainers`); every renderer reads these
objects, never their JSON form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from memdiag.values.units import format_bytes

__all__ = ["ROOT_KINDS", "Edge", "RetainerGroup", "blame_order", "render_chain"]

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

_UNNAMED_ROOTS = frozenset({"unreachable", "native"})

_PATH_LABEL = re.compile(r"^(?!\.\.\. )[.\[]")  # ``... N more links ...`` is no path


def _is_path(label: str) -> bool:
    return bool(_PATH_LABEL.match(label))


def _int(value: Any) -> int:
    """An int from a JSON field, 0 where it is missing or not a number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _count(count: int, word: str) -> str:
    return f"{count} {word if count == 1 else word + 's'}"


def _str(value: Any) -> str:
    return "" if value is None else str(value)


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

    def text(self) -> str:
        """``label -> what it reaches`` (the node, else the type's short name)."""
        what = self.node or self.type_name.rsplit(".", 1)[-1]
        return f"{self.label} -> {what}" if self.label else what

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
            label=_str(data.get("label")),
            type_name=_str(data.get("type_name")),
            node=_str(data.get("node")),
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
        """The reference to cut, ``cache key -> bound method Model.forward``, from the
        object before it; ``""`` when unknown or when it is the chain's last hop (the
        chain already says it)."""
        if self.suspect_index is None or self.suspect_index == len(self.chain) - 1:
            return ""
        before = self.chain[self.suspect_index - 1] if self.suspect_index else None
        source = (before.node or before.label or before.type_name) if before else self.root_name
        return f"{source} -> {self.chain[self.suspect_index].text()}"

    def suspect_hop(self) -> str:
        """Just the suspect reference, ``cache key -> bound method Model.forward``."""
        if self.suspect_index is None or self.suspect_index == len(self.chain) - 1:
            return ""
        return self.chain[self.suspect_index].text()

    def counts_text(self) -> str:
        """``3 tensors`` or ``3 tensors, 2 storages`` when views share storages."""
        text = _count(self.tensor_count, "tensor")
        if self.storage_count and self.storage_count != self.tensor_count:
            text += f", {_count(self.storage_count, 'storage')}"
        return text

    def summary(self) -> str:
        """One sentence with the numbers, for messages."""
        what = (
            f"{format_bytes(self.retained_bytes)} in {_count(self.tensor_count, 'tensor')} "
            f"({_count(self.storage_count, 'storage')})"
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
        """Read a group back; fields a report of another memdiag version lacks (or
        a hand edit broke) get neutral values instead of failing the whole report."""
        raw_chain = data.get("chain")
        chain = tuple(
            Edge.from_json(e)
            for e in (raw_chain if isinstance(raw_chain, list) else ())
            if isinstance(e, dict)
        )
        suspect = data.get("suspect_index")
        known = data.get("known")
        site = data.get("alloc_site")
        keys = data.get("storage_keys")
        others = data.get("other_roots")
        return cls(
            root_kind=_str(data.get("root_kind")) or "unknown",
            root_name=_str(data.get("root_name")) or "?",
            chain=chain,
            suspect_index=suspect
            if isinstance(suspect, int)
            and not isinstance(suspect, bool)
            and 0 <= suspect < len(chain)
            else None,
            retained_bytes=_int(data.get("retained_bytes")),
            tensor_count=_int(data.get("tensor_count")),
            storage_count=_int(data.get("storage_count")),
            signature=_str(data.get("signature")),
            frozen=bool(data.get("frozen", False)),
            known=None if known is None else str(known),
            example_tensor=_str(data.get("example_tensor")),
            storage_keys=tuple(_int(k) for k in keys) if isinstance(keys, list) else (),
            common_length=_int(data.get("common_length")),
            note=_str(data.get("note")),
            alloc_site=None if site is None else str(site),
            other_roots=tuple(str(r) for r in others) if isinstance(others, list) else (),
        )


def blame_order(group: RetainerGroup) -> tuple[bool, bool, int, str]:
    """The order groups are shown and blamed in: what the program holds by a name it
    owns first (a global, a class attribute, a cache, a thread), then what only native
    code or an unreachable cycle holds, framework retention (``known``) last; each
    biggest first."""
    return (
        group.known is not None,
        group.root_kind in _UNNAMED_ROOTS,
        -group.retained_bytes,
        group.root_name,
    )

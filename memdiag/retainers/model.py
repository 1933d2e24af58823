"""The result of the retainer analysis: a :class:`RetainerReport` of
:class:`~memdiag.values.retainers.RetainerGroup` findings (the group and edge value
types live in :mod:`memdiag.values.retainers`, where findings and renderers read them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memdiag.values.retainers import RetainerGroup

__all__ = ["RetainerReport"]


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

"""What a check found: frozen, JSON-safe finding objects shared by every report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from memdiag.values.readings import ProcessUsage
from memdiag.values.retainers import RetainerGroup
from memdiag.values.units import format_bytes

__all__ = ["Finding", "FindingKind", "TensorGroup", "TensorSummary"]


class FindingKind(str, Enum):
    """The class of a finding.  Only some classes are leaks (see :attr:`is_leak_class`)."""

    LIVE_TENSORS = "live_tensors"
    GC_FROZEN = "gc_frozen"
    NATIVE = "native"
    PRIVATE_POOL = "private_pool"
    OUTSIDE_TORCH = "outside_torch"
    OTHER_PROCESS = "other_process"
    ALLOCATOR_CACHE = "allocator_cache"
    WORKSPACE = "framework_workspace"
    CONTEXT = "device_context"
    PROCESS_GROUP = "process_group"
    WORKER = "worker"

    @property
    def heading(self) -> str:
        """The class in words, for messages (``live tensors created since baseline``)."""
        return _NAMES[self][0]

    @property
    def label(self) -> str:
        """The class in two or three words, for badges and table cells."""
        return _NAMES[self][1]

    @property
    def is_leak_class(self) -> bool:
        return self in _LEAK_CLASSES


_NAMES: dict[FindingKind, tuple[str, str]] = {
    # kind: (title, for messages; label, two or three words for badges and table cells)
    FindingKind.LIVE_TENSORS: ("live tensors created since baseline", "live tensors"),
    FindingKind.GC_FROZEN: ("gc-frozen garbage", "gc-frozen"),
    FindingKind.NATIVE: ("allocated memory held by no Python tensor", "native (no tensor)"),
    FindingKind.PRIVATE_POOL: ("reserved memory a live private pool keeps", "private pool"),
    FindingKind.OUTSIDE_TORCH: ("memory outside PyTorch", "outside PyTorch"),
    FindingKind.OTHER_PROCESS: ("memory of another process of the tree", "other process"),
    FindingKind.ALLOCATOR_CACHE: ("allocator cache (reserved, not allocated)", "allocator cache"),
    FindingKind.WORKSPACE: ("framework workspaces", "workspaces"),
    FindingKind.CONTEXT: ("device context", "device context"),
    FindingKind.PROCESS_GROUP: ("process group not destroyed", "process group"),
    FindingKind.WORKER: ("worker process", "worker process"),
}
_LEAK_CLASSES = frozenset(
    {
        FindingKind.LIVE_TENSORS,
        FindingKind.GC_FROZEN,
        FindingKind.NATIVE,
        FindingKind.PRIVATE_POOL,
        FindingKind.OUTSIDE_TORCH,
        FindingKind.OTHER_PROCESS,
        FindingKind.PROCESS_GROUP,
        FindingKind.WORKER,
    }
)


@dataclass(frozen=True)
class TensorSummary:
    """Plain description of one tensor: what a report lists."""

    shape: tuple[int, ...]
    dtype: str
    device: str
    type_name: str
    nbytes: int

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        kind = "" if self.type_name == "Tensor" else f"{self.type_name} "
        return f"{kind}{dims} {self.dtype} on {self.device} ({format_bytes(self.nbytes)})"


@dataclass(frozen=True)
class TensorGroup:
    """Leaked storages of one shape, dtype and device, counted together."""

    example: TensorSummary
    count: int
    nbytes: int

    def describe(self) -> str:
        times = f"{self.count} x " if self.count > 1 else ""
        return f"{times}{self.example.describe()} = {format_bytes(self.nbytes)}"


@dataclass(frozen=True)
class Finding:
    """One class of memory that did not come back (or is worth knowing about).

    ``is_leak`` findings make the check fail; the others (allocator cache, framework
    workspaces, device context) are reported, never called leaks.  ``retainers`` holds
    the retainer analysis' groups once it has run.
    """

    kind: FindingKind
    device: str
    nbytes: int
    is_leak: bool
    message: str
    advice: str = ""
    tensors: tuple[TensorGroup, ...] = ()
    processes: tuple[ProcessUsage, ...] = ()
    retainers: tuple[RetainerGroup, ...] = ()
    storages: tuple[tuple[int, int, int], ...] = field(default=(), repr=False)
    """(storage key, bytes, data_ptr) of the leaked storages, for the retainer analysis."""

    def headline(self) -> str:
        return f"{self.device}: {self.message}"

    def with_retainers(self, retainers: tuple[RetainerGroup, ...]) -> Finding:
        return dataclasses.replace(self, retainers=retainers)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "device": self.device,
            "bytes": self.nbytes,
            "is_leak": self.is_leak,
            "message": self.message,
            "advice": self.advice,
            "tensors": [
                {
                    "count": g.count,
                    "bytes": g.nbytes,
                    "example": dataclasses.asdict(g.example),
                }
                for g in self.tensors
            ],
            "processes": [dataclasses.asdict(p) for p in self.processes],
            "retainers": [g.to_json() for g in self.retainers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(
            kind=FindingKind(data["kind"]),
            device=data["device"],
            nbytes=int(data["bytes"]),
            is_leak=bool(data["is_leak"]),
            message=data["message"],
            advice=data.get("advice", ""),
            tensors=tuple(
                TensorGroup(
                    example=TensorSummary(
                        **{**g["example"], "shape": tuple(g["example"]["shape"])}
                    ),
                    count=int(g["count"]),
                    nbytes=int(g["bytes"]),
                )
                for g in data.get("tensors", ())
            ),
            processes=tuple(ProcessUsage(**p) for p in data.get("processes", ())),
            retainers=tuple(
                RetainerGroup.from_json(g) for g in data.get("retainers", ()) if isinstance(g, dict)
            ),
        )

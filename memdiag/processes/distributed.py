"""Multi-process engines: ranks, process groups, and the processes of the tree.

An inference engine is not one process: an engine core, one worker per GPU,
tensor-parallel ranks started by ``torchrun`` or ``multiprocessing``, NCCL
communicators.  This module gives the tracker what it needs to see them:

- :func:`rank_info` reads the rank a launcher (``torchrun``) gave this process, and
  :func:`rank_json_path` names its report (``out.json`` -> ``out.rank1.json``);
- :func:`process_group_findings` reports ``torch.distributed`` process groups that
  shutdown left alive (it never imports torch: no torch, no process group);

The process tree itself is followed by :class:`~memdiag.processes.watch.ProcessWatch`.

Everything here reads the environment and ``torch.distributed`` if the program
imported it; nothing launches work.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from memdiag.values.findings import Finding, FindingKind
from memdiag.values.units import plural

__all__ = [
    "GroupState",
    "RankInfo",
    "current_rank",
    "process_group_findings",
    "process_group_state",
    "rank_info",
    "rank_json_path",
]

# -- ranks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankInfo:
    """The place of this process in a distributed job, as its launcher set it."""

    rank: int
    world_size: int
    local_rank: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)


def rank_info(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as ``torchrun`` sets them, else ``None``."""
    env = os.environ if environ is None else environ
    try:
        rank = int(env["RANK"])
        world = int(env["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    try:
        local: int | None = int(env["LOCAL_RANK"])
    except (KeyError, ValueError):
        local = None
    return RankInfo(rank=rank, world_size=world, local_rank=local)


def rank_json_path(path: str | os.PathLike[str], info: RankInfo | None) -> Path:
    """Where rank ``info.rank`` writes ``--json path``: ``out.json`` -> ``out.rank1.json``.

    Under a launcher every rank gets its own file, world size 1 included, so scripts
    that merge them need not special-case it; without one the path is unchanged.
    """
    target = Path(path)
    if info is None:
        return target
    return target.with_name(f"{target.stem}.rank{info.rank}{target.suffix}")


def current_rank() -> int | None:
    """This process' rank: from the launcher's environment, else from an initialised
    ``torch.distributed`` (only if the program imported it), else ``None``."""
    info = rank_info()
    if info is not None:
        return info.rank
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except Exception:  # noqa: BLE001 - a half-initialised group must not break a report
        return None
    return None


# -- process groups ----------------------------------------------------------------------


@dataclass(frozen=True)
class GroupState:
    """Which ``torch.distributed`` process groups exist at one moment."""

    initialized: bool = False
    backend: str = ""
    rank: int | None = None
    world_size: int | None = None
    groups: frozenset[str] = frozenset()
    """Names of every live process group, the default group included."""


def process_group_state() -> GroupState:
    """The process groups of this process; ``GroupState()`` when torch.distributed was
    never imported (this function does not import it) or is not initialised."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return GroupState()
    try:
        if not (dist.is_available() and dist.is_initialized()):
            return GroupState()
        backend = str(dist.get_backend())
        rank, world = int(dist.get_rank()), int(dist.get_world_size())
    except Exception:  # noqa: BLE001 - a broken group is still not a crash of the check
        return GroupState()
    return GroupState(
        initialized=True, backend=backend, rank=rank, world_size=world, groups=_group_names()
    )


def _group_names() -> frozenset[str]:
    # ``_world.pg_names`` (ProcessGroup -> name) is private but has held every live
    # group since torch 2.0; without it only the default group is known.
    c10d = sys.modules.get("torch.distributed.distributed_c10d")
    names = getattr(getattr(c10d, "_world", None), "pg_names", None)
    if not isinstance(names, Mapping):
        return frozenset({"default_pg"})
    return frozenset(str(n) for n in names.values())


def _group_device(state: GroupState) -> str:
    if "nccl" not in state.backend and "xccl" not in state.backend:
        return "cpu"
    info = rank_info()
    if info is not None and info.local_rank is not None:
        return f"cuda:{info.local_rank}"
    return "cuda"


def process_group_findings(baseline: GroupState | None = None) -> list[Finding]:
    """A ``PROCESS_GROUP`` finding when shutdown left ``torch.distributed`` initialised.

    ``baseline``: the :func:`process_group_state` taken at the tracker's start.  Groups
    that existed then are not this run's (a session fixture may own them); only groups
    created since are reported.  Without a baseline every live group counts.
    """
    state = process_group_state()
    if not state.initialized:
        return []
    base = baseline or GroupState()
    new = sorted(state.groups - base.groups)
    if base.initialized and not new:
        return []
    where = f"backend {state.backend}, rank {state.rank} of {state.world_size}"
    if base.initialized:
        what = (
            f"{plural(len(new), 'process group')} created since baseline "
            f"({', '.join(new)}; {where})"
        )
        advice = "call torch.distributed.destroy_process_group(group) for each in shutdown"
    else:
        more = len(state.groups) - 1
        what = "the default process group (" + where + ")"
        if more > 0:
            what += f" and {plural(more, 'more process group')}"
        advice = "call torch.distributed.destroy_process_group() in shutdown"
    return [
        Finding(
            kind=FindingKind.PROCESS_GROUP,
            device=_group_device(state),
            nbytes=0,
            is_leak=True,
            message=(
                f"torch.distributed is still initialised after shutdown: {what} were never "
                "destroyed; their communicators keep device buffers, threads and sockets"
            ),
            advice=advice,
        )
    ]

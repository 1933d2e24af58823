"""Allocation sites of leaked CUDA storages, from torch's memory history.

With ``record_alloc_stacks=True`` the tracker turns on
``torch.cuda.memory._record_memory_history`` (state only, Python frames) at its
baseline; on a leak, the allocator snapshot maps each leaked storage's address to
the Python frames that allocated its block.  The first frame outside torch and
memdiag is the site shown.  Recording costs allocator time, so it is opt-in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from memdiag.values.findings import Finding

__all__ = ["format_site", "sites_for", "start_recording", "stop_recording"]

_MAX_ENTRIES = 200_000
_state = {"on": False}


def _cuda() -> Any:
    torch: Any = sys.modules.get("torch")
    if torch is None:
        import torch
    return torch.cuda


def start_recording(devices: Iterable[str]) -> list[str]:
    """Turn recording on when a CUDA device is checked; returns notices."""
    if not any(d.startswith("cuda") for d in devices):
        return ["allocation stacks need a CUDA device; not recorded"]
    try:
        _cuda().memory._record_memory_history(
            enabled="state", context="alloc", stacks="python", max_entries=_MAX_ENTRIES
        )
    except Exception as exc:  # noqa: BLE001 - optional diagnostics must not break a check
        return [f"allocation stacks unavailable: {type(exc).__name__}: {exc}"]
    _state["on"] = True
    return []


def stop_recording() -> None:
    if _state["on"]:
        _state["on"] = False
        try:
            _cuda().memory._record_memory_history(enabled=None)
        except Exception:  # noqa: BLE001
            pass


_SKIP = (
    os.sep + "torch" + os.sep,
    os.sep + "memdiag" + os.sep,
    "<frozen ",
)


def format_site(frames: Sequence[dict[str, Any]]) -> str | None:
    """``file:line in function`` of the first frame that is the program's own."""
    for frame in frames:
        filename = str(frame.get("filename", ""))
        if not filename or any(part in filename for part in _SKIP):
            continue
        return f"{filename}:{frame.get('line', '?')} in {frame.get('name', '?')}"
    return None


def sites_for(findings: Sequence[Finding]) -> tuple[dict[int, str], list[str]]:
    """Map leaked storage keys to allocation sites through the allocator snapshot."""
    if not _state["on"]:
        return {}, []
    wanted = {ptr: key for f in findings for key, _, ptr in f.storages if ptr}
    try:
        snapshot = _cuda().memory._snapshot()
    except Exception as exc:  # noqa: BLE001
        return {}, [f"allocation stacks unavailable: {type(exc).__name__}: {exc}"]
    sites: dict[int, str] = {}
    for segment in snapshot.get("segments", ()):
        for block in segment.get("blocks", ()):
            key = wanted.get(int(block.get("address", -1)))
            if key is None:
                continue
            site = format_site(block.get("frames") or ())
            if site:
                sites[key] = site
    missing = len(wanted) - len(sites)
    notices = [f"{missing} leaked storages have no recorded allocation site"] if missing else []
    return sites, notices

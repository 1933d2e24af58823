"""Which processes belong to us: this process and its descendants, read from ``/proc``.

Drivers (NVML, amdsmi) charge device memory to PIDs.  A test that starts a worker
(a DataLoader process, a child engine, a compiler subprocess) still owns what that
worker holds, so attribution goes by process tree, not by ``os.getpid()`` alone.

Linux only, and no dependency: where ``/proc`` cannot be read the tree is just the
root PID and :func:`cmdline` answers ``''``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

__all__ = ["cmdline", "is_alive", "pid_cursor", "process_tree", "stat_fields"]

_PROC = Path("/proc")


def stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name: state ``[0]``, ppid ``[1]``,
    starttime ``[19]``; ``None`` for a process that is gone (or no ``/proc``)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    _, sep, rest = text.rpartition(")")
    if not sep:
        return None
    fields = rest.split()
    return fields if len(fields) >= 2 else None


def pid_cursor() -> int | None:
    """The last PID the kernel handed out in this PID namespace (the last field of
    ``/proc/loadavg``), ``None`` where it cannot be read.

    Every process and thread created anywhere in the namespace moves it, so while it
    stays the same no process can have joined a tree seen at that value: one small
    read (~10 us) stands in for a walk of the tree on the passing path.
    """
    try:
        fd = os.open("/proc/loadavg", os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, 128)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return int(text.rsplit(None, 1)[-1])
    except (IndexError, ValueError):
        return None


def _parents() -> dict[int, list[int]]:
    """``ppid -> [pid, ...]`` for every process visible in ``/proc``."""
    children: dict[int, list[int]] = defaultdict(list)
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = stat_fields(int(entry))
        if fields is None:
            continue  # exited while we were scanning
        try:
            children[int(fields[1])].append(int(entry))
        except ValueError:
            continue
    return children


def _children(pid: int) -> list[int] | None:
    """Direct children from ``/proc/PID/task/*/children`` (reads only our subtree);
    ``None`` where the kernel lacks it.  Plain paths: this runs on every check."""
    base = f"{_PROC}/{pid}/task"
    try:
        tasks = os.listdir(base)
    except OSError:
        return []
    out: list[int] = []
    for task in tasks:
        try:
            with open(f"{base}/{task}/children", "rb") as handle:
                text = handle.read()
        except FileNotFoundError:
            if task == str(pid):
                return None  # kernel without CONFIG_PROC_CHILDREN
            continue
        except OSError:
            continue
        out.extend(int(c) for c in text.split())
    return out


def process_tree(pid: int | None = None) -> frozenset[int]:
    """``pid`` (default: this process) and all its live descendants.

    A snapshot: processes may start or exit while ``/proc`` is read.  Reads only the
    subtree through ``/proc/PID/task/*/children`` where the kernel provides it, else
    scans every ``/proc/PID/stat``.  Where ``/proc`` is missing (macOS, Windows) the
    answer is ``{pid}``.
    """
    root = os.getpid() if pid is None else pid
    tree = {root}
    stack = [root]
    while stack:
        children = _children(stack.pop())
        if children is None:
            return _scan_all(root)
        for child in children:
            if child not in tree:
                tree.add(child)
                stack.append(child)
    return frozenset(tree)


def _scan_all(root: int) -> frozenset[int]:
    children = _parents()
    tree = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in tree:
                tree.add(child)
                stack.append(child)
    return frozenset(tree)


_OWN_CMDLINE: dict[tuple[int, int, Path], str] = {}


def cmdline(pid: int, *, max_len: int = 256) -> str:
    """The command line of ``pid`` as one string, ``''`` when unknown or gone.

    Falls back to the kernel's short name (``/proc/PID/comm``) for processes whose
    command line is empty (zombies, kernel threads); truncated to ``max_len``.  This
    process' own line is read once (every driver reading names it; it cannot change).
    """
    if pid == os.getpid():
        key = (pid, max_len, _PROC)
        text = _OWN_CMDLINE.get(key)
        if text is None:
            text = _OWN_CMDLINE[key] = _read_cmdline(pid, max_len)
        return text
    return _read_cmdline(pid, max_len)


def _read_cmdline(pid: int, max_len: int) -> str:
    base = _PROC / str(pid)
    try:
        raw = (base / "cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)
    if not text:
        try:
            text = (base / "comm").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
    if len(text) > max_len:
        text = text[: max_len - 1] + "…"
    return text


def is_alive(pid: int) -> bool:
    """Whether ``pid`` names a running process (zombies count as gone: they hold no memory)."""
    if pid <= 0:
        return False
    fields = stat_fields(pid)
    if fields is not None:
        return fields[0] not in ("Z", "X", "x")
    # No /proc here, or the entry is hidden (``hidepid``): ask the kernel directly.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True

"""Process-wide host memory counters: the cheap gate in front of the CPU tensor census.

The CPU has no allocator counter for tensors, so an exact reading is a census (a heap
walk, tens of milliseconds on a large heap).  Two counters read in microseconds say
whether that walk can change the verdict:

- ``malloc_in_use``: bytes in use by glibc's malloc, ``uordblks + hblkhd`` of
  ``mallinfo2()`` (arena chunks in use, plus chunks big enough to get their own
  ``mmap``).  torch's CPU allocator takes every storage from ``posix_memalign``, so a
  new 1 KiB tensor moves ``uordblks`` and a 16 MiB one moves ``hblkhd``, both to within
  a chunk header.  Bytes *in use*, not mapped: ``malloc_trim`` or a freed arena going
  back to the OS does not move it (a resident-set gate would be fooled both ways).
- ``mapped_other``: the address space not owned by malloc (``VmSize`` from
  ``/proc/self/statm`` minus malloc's arenas and mmapped chunks).  Storages that are
  not malloc'd live here: ``share_memory_()``, ``torch.from_file``,
  ``torch.load(mmap=True)``, pinned host buffers.

:func:`moved` compares two readings component by component: growth of either by more
than the slack, and also a fall by more than the slack (memory that existed at the
baseline was freed, which could offset new tensors), means the census must run.  A
gate reading is ``None`` where these counters do not exist (not Linux with glibc
2.33+); the census then runs every time, as it always did.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Any

from memdiag.values.units import format_bytes

__all__ = ["HostCounters", "host_counters", "host_ram_total", "moved"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        ("arena", ctypes.c_size_t),
        ("ordblks", ctypes.c_size_t),
        ("smblks", ctypes.c_size_t),
        ("hblks", ctypes.c_size_t),
        ("hblkhd", ctypes.c_size_t),
        ("usmblks", ctypes.c_size_t),
        ("fsmblks", ctypes.c_size_t),
        ("uordblks", ctypes.c_size_t),
        ("fordblks", ctypes.c_size_t),
        ("keepcost", ctypes.c_size_t),
    ]


@dataclass(frozen=True)
class HostCounters:
    """One reading of the process' host memory counters, in bytes."""

    malloc_in_use: int
    mapped_other: int

    def to_json(self) -> dict[str, int]:
        return {"malloc_in_use": self.malloc_in_use, "mapped_other": self.mapped_other}


_UNSET: Any = object()
_mallinfo2: Any = _UNSET
_PAGE = 4096


def _load() -> Any:
    """glibc's ``mallinfo2``, or ``None`` (not Linux, not glibc, glibc before 2.33)."""
    global _mallinfo2, _PAGE
    if _mallinfo2 is not _UNSET:
        return _mallinfo2
    found = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            gnu = getattr(libc, "gnu_get_libc_version", None)
            fn = getattr(libc, "mallinfo2", None) if gnu is not None else None
            if fn is not None:
                fn.restype = _MallInfo2
                fn.argtypes = []
                _PAGE = os.sysconf("SC_PAGE_SIZE")
                found = fn
        except (OSError, ValueError, AttributeError):
            found = None
    _mallinfo2 = found
    return found


def _vm_size() -> int | None:
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        return None
    try:
        fields = os.read(fd, 256).split()
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return int(fields[0]) * _PAGE
    except (IndexError, ValueError):
        return None


def host_counters() -> HostCounters | None:
    """The counters now, or ``None`` where they do not exist (the census must run)."""
    fn = _load()
    if fn is None:
        return None
    info = fn()
    vm = _vm_size()
    if vm is None:
        return None
    in_use = int(info.uordblks) + int(info.hblkhd)
    return HostCounters(malloc_in_use=in_use, mapped_other=vm - int(info.arena) - int(info.hblkhd))


def moved(before: HostCounters, after: HostCounters, slack: int) -> str | None:
    """Why a census must run between two readings, or ``None`` when the counters rule
    out more than ``slack`` bytes of new tensors.

    Both directions count: a fall by more than ``slack`` means memory that existed at
    ``before`` was freed, and new tensors of up to that size could hide behind it.
    """
    for name, label in (
        ("malloc_in_use", "malloc'd bytes in use"),
        ("mapped_other", "memory mapped outside malloc"),
    ):
        delta = getattr(after, name) - getattr(before, name)
        if delta > slack:
            return f"{label} rose by {format_bytes(delta)} (gate slack {format_bytes(slack)})"
        if -delta > slack:
            return (
                f"{label} fell by {format_bytes(-delta)} (gate slack {format_bytes(slack)}): "
                "freed memory could offset new tensors"
            )
    return None


def host_ram_total() -> int | None:
    """Bytes of physical memory of this host (``os.sysconf``), ``None`` where unknown:
    what a percentage tolerance is a percentage of on ``cpu``."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    total = pages * size
    return total if pages > 0 and size > 0 else None

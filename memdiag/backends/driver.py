"""What the vendor-driver backends (NVML, amdsmi) share: the library's lifecycle.

A driver backend imports its vendor library on first use (never at import of
memdiag), initialises it once, lists the devices in torch's ``cuda:N`` numbering, and
shuts it down once in :meth:`DriverBackend.close`.  A missing or broken library, a
failed initialisation or a failed device listing makes the backend unavailable with
a one-line reason; :meth:`~DriverBackend.probe` never raises.  Subclasses say how to
import, initialise, list, query and shut down; the rest is here, once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from memdiag.backends.base import Availability, BackendUnavailable
from memdiag.processes import proctree
from memdiag.values.readings import DeviceReading, ProcessUsage

__all__ = ["DriverBackend", "driver_reading", "one_line"]

Entry = TypeVar("Entry")
"""What a subclass keeps per device (a handle, or a handle and its UUID)."""
Raw = TypeVar("Raw")
"""What one query of the library returns, before it becomes a reading."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


class DriverBackend(Generic[Entry, Raw]):
    """The lifecycle of a vendor library, shared by the NVML and amdsmi backends.

    ``module`` replaces the vendor library (tests pass a fake); by default it is
    imported on first use.  Messages start with :attr:`label`.
    """

    name: str
    label: str
    """Prefix of every reason: the package a user installs (``nvidia-ml-py``)."""
    sees: str
    """Who lists the devices, in ``no device cuda:3 (NVML sees: ...)``."""

    def __init__(self, *, module: Any = None) -> None:
        self._module: Any = module
        self._availability: Availability | None = None
        self._lib: Any = None
        self._error: type[BaseException] = Exception
        self._devices: dict[str, Entry] = {}
        self._initialised = False
        self._closed = False

    # -- what a subclass says ------------------------------------------------------

    def _import(self) -> Any:
        """Import the vendor library (may raise anything: a broken install does)."""
        raise NotImplementedError

    def _import_failed(self, exc: BaseException) -> str:
        """The reason when :meth:`_import` raised ``exc``."""
        raise NotImplementedError

    def _initialise(self, lib: Any) -> None:
        """Initialise the library (raises on failure)."""
        raise NotImplementedError

    def _init_failed(self, exc: BaseException) -> str:
        """The reason when :meth:`_initialise` raised ``exc``."""
        raise NotImplementedError

    def _list(self, lib: Any) -> dict[str, Entry]:
        """``cuda:N`` -> entry, after the visibility variables."""
        raise NotImplementedError

    def _shutdown(self, lib: Any) -> None:
        raise NotImplementedError

    def _query(self, entry: Entry) -> Raw:
        """Ask the library about one device; its errors become ``BackendUnavailable``."""
        raise NotImplementedError

    def _reading(self, device: str, entry: Entry, raw: Raw) -> DeviceReading:
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------

    def _start(self) -> Availability:
        if self._availability is None:
            self._availability = self._init()
        return self._availability

    def _init(self) -> Availability:
        lib = self._module
        if lib is None:
            try:
                lib = self._import()
            except Exception as exc:  # noqa: BLE001 - a broken install must not crash us
                return Availability.no(self._import_failed(exc))
        self._lib = lib
        self._error = self._error_type(lib)
        try:
            self._initialise(lib)
        except Exception as exc:  # noqa: BLE001 - probe() never raises
            return Availability.no(self._init_failed(exc))
        self._initialised = True
        try:
            self._devices = self._list(lib)
        except Exception as exc:  # noqa: BLE001 - probe() never raises
            self.close()
            return Availability.no(f"{self.label}: listing devices failed: {one_line(exc)}")
        return Availability.yes()

    def _error_type(self, lib: Any) -> type[BaseException]:
        """The library's own exception class (``Exception`` where it has none)."""
        return Exception

    def probe(self) -> Availability:
        """Import and initialise the library if needed; never raises."""
        return self._start()

    def close(self) -> None:
        """Shut the library down (once; later calls do nothing).  The backend is then
        unusable."""
        if self._closed:
            return
        self._closed = True
        self._availability = Availability.no(f"{self.label}: the {self.name} backend was closed")
        self._devices = {}
        if self._initialised:
            self._initialised = False
            # Nothing useful can be done about a failed shutdown.
            with contextlib.suppress(Exception):
                self._shutdown(self._lib)

    # -- reading ---------------------------------------------------------------------

    def devices(self) -> tuple[str, ...]:
        self._start()
        return tuple(self._devices)

    def _handle(self, device: str) -> Entry:
        availability = self._start()
        if not availability.available:
            raise BackendUnavailable(availability.reason)
        try:
            return self._devices[device]
        except KeyError:
            names = ", ".join(self._devices) or "none"
            raise BackendUnavailable(
                f"{self.name}: no device {device} ({self.sees} sees: {names})"
            ) from None

    def read(self, device: str) -> DeviceReading:
        entry = self._handle(device)
        try:
            raw = self._query(entry)
        except self._error as exc:
            raise BackendUnavailable(
                f"{self.name}: reading {device} failed: {one_line(exc)}"
            ) from exc
        return self._reading(device, entry, raw)

    def reset_peak(self, device: str) -> None:
        """The driver keeps no peak; nothing to reset."""

    def settle(self, device: str, *, baseline: bool = False) -> None:
        """The driver cannot synchronise or free anything; the tracker polls instead."""


def driver_reading(
    device: str,
    *,
    source: str,
    total: int | None,
    used: int | None,
    usage: Mapping[int, tuple[int | None, str]],
    extra: Mapping[str, Any],
    unknown_note: str,
) -> DeviceReading:
    """A reading from what a driver says: device ``total`` / ``used`` and, per process,
    ``pid -> (bytes or None where the driver cannot tell, the driver's name for it)``.

    Memory charged to this process is the sum over this process and its descendants.
    The passing path stays cheap: ``/proc`` is walked for the tree only when the device
    lists processes other than this one, and only the tree's processes are looked up.
    """
    me = os.getpid()
    others = [pid for pid in usage if pid != me]
    tree = proctree.process_tree() if others else frozenset({me})
    ours = [usage[pid][0] for pid in usage if pid in tree]
    process_used = None if any(u is None for u in ours) else sum(u or 0 for u in ours)
    processes = tuple(
        ProcessUsage(pid=pid, used=u, name=(proctree.cmdline(pid) if pid in tree else "") or name)
        for pid, (u, name) in sorted(usage.items(), key=lambda kv: (-(kv[1][0] or 0), kv[0]))
        if u is not None
    )
    info: dict[str, Any] = {
        **extra,
        "tree_pids": sorted(tree),
        "own_used": usage[me][0] if me in usage else 0,
    }
    unknown = sorted(pid for pid, (u, _) in usage.items() if u is None)
    if unknown:
        info["used_unknown_pids"] = unknown
        info["note"] = unknown_note
    hidden = sorted(pid for pid in others if pid not in tree and not proctree.is_alive(pid))
    if hidden:
        # Exited since the driver listed them, or PIDs of another PID namespace (container).
        info["pids_not_visible"] = hidden
    return DeviceReading(
        device=device,
        sources=(source,),
        driver_used=used,
        total=total,
        process_used=process_used,
        processes=processes,
        time=time.time(),
        extra=info,
    )

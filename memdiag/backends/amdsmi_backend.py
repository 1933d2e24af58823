"""Device memory as the AMD driver sees it, through ROCm's ``amdsmi`` Python package.

The AMD counterpart of :mod:`memdiag.backends.nvml`: device VRAM total/used and the
VRAM each process holds.  ROCm builds of torch use the ``cuda`` device namespace, so
devices are ``cuda:N`` too, numbered after ``ROCR_VISIBLE_DEVICES`` (applied first, by
the ROCm runtime) and then ``HIP_VISIBLE_DEVICES`` (or ``CUDA_VISIBLE_DEVICES`` where
that is unset), by index, in amdsmi's processor order.

API used (amdsmi 6.x/7.x, ``py-interface/amdsmi_interface.py``):

- ``amdsmi_init(AmdSmiInitFlags.INIT_AMD_GPUS)`` / ``amdsmi_shut_down()``;
  ``amdsmi_get_processor_handles()``.
- ``amdsmi_get_gpu_memory_total(h, AmdSmiMemoryType.VRAM)`` and
  ``amdsmi_get_gpu_memory_usage(h, AmdSmiMemoryType.VRAM)``: bytes.  Older releases
  without them fall back to ``amdsmi_get_gpu_vram_usage(h)``, whose ``vram_total`` /
  ``vram_used`` are in MB (``amdsmi_vram_usage_t``), so only MiB-precise.
- ``amdsmi_get_gpu_process_list(h)``: dicts with ``pid``, ``name``, ``mem`` and
  ``memory_usage.vram_mem`` (bytes, ``amdsmi_proc_info_t``) in current releases; a list
  of process handles to pass to ``amdsmi_get_gpu_process_info(h, p)`` in older ones.
- Errors are ``AmdSmiException`` (``AmdSmiLibraryException`` carries ``err_code``).

``import amdsmi`` itself fails with ``KeyError``/``OSError`` when ROCm's
``libamd_smi.so`` cannot be found; that makes the backend unavailable, with the reason.

The driver releases a process's VRAM lazily: for a moment after a worker exits its
memory may still show in ``driver_used``.  Nothing is done about it here; the tracker
polls until readings settle.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from typing import Any

from memdiag.backends.base import Availability, BackendUnavailable
from memdiag.processes import proctree
from memdiag.values.readings import DeviceReading, ProcessUsage

__all__ = ["AmdSmiBackend", "visible_indexes"]

_INSTALL = "install ROCm's amdsmi; pip install memdiag[rocm]"
_MIB = 1024 * 1024


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _select(indexes: list[int], spec: str | None) -> list[int]:
    """Apply one ``*_VISIBLE_DEVICES`` value (indexes into ``indexes``) the way HIP does."""
    if spec is None:
        return indexes
    chosen: list[int] = []
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry.lstrip("-").isdigit():
            break  # UUIDs are not mapped here; an unreadable entry ends the list
        position = int(entry)
        if not 0 <= position < len(indexes) or indexes[position] in chosen:
            break
        chosen.append(indexes[position])
    return chosen


def visible_indexes(count: int, environ: dict[str, str] | None = None) -> list[int]:
    """amdsmi processor indexes in torch's ``cuda:N`` order, after the visibility variables."""
    env = os.environ if environ is None else environ
    indexes = _select(list(range(count)), env.get("ROCR_VISIBLE_DEVICES"))
    hip = env.get("HIP_VISIBLE_DEVICES")
    return _select(indexes, hip if hip is not None else env.get("CUDA_VISIBLE_DEVICES"))


def _int(value: Any) -> int | None:
    """amdsmi answers ``'N/A'`` for values a device cannot report."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _process_entry(info: Any) -> tuple[int, int | None, str] | None:
    """``(pid, vram bytes, name)`` from one process dict, whichever release shaped it."""
    if not isinstance(info, dict):
        return None
    pid = _int(info.get("pid"))
    if pid is None:
        return None
    memory = info.get("memory_usage")
    used = _int(memory.get("vram_mem")) if isinstance(memory, dict) else None
    if used is None:
        used = _int(info.get("mem"))
    name = info.get("name")
    return pid, used, name if isinstance(name, str) and name != "N/A" else ""


class AmdSmiBackend:
    """Driver-side memory of AMD GPUs: VRAM total/used and per-process VRAM.

    ``module`` replaces ``amdsmi`` (tests pass a fake); by default ``amdsmi`` is
    imported on first use, never at import of this module.  ``environ`` replaces
    ``os.environ`` for the visibility variables.
    """

    name = "amdsmi"

    def __init__(self, *, module: Any = None, environ: dict[str, str] | None = None) -> None:
        self._module: Any = module
        self._environ = environ
        self._availability: Availability | None = None
        self._smi: Any = None
        self._error: type[BaseException] = Exception
        self._devices: dict[str, Any] = {}
        self._initialised = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    def _start(self) -> Availability:
        if self._availability is None:
            self._availability = self._init()
        return self._availability

    def _init(self) -> Availability:
        smi = self._module
        if smi is None:
            try:
                smi = importlib.import_module("amdsmi")
            except ImportError as exc:
                return Availability.no(f"amdsmi: {_one_line(exc)} ({_INSTALL})")
            except Exception as exc:  # noqa: BLE001 - a broken install must not crash us
                # The real package raises KeyError('libamd_smi.so') (or OSError) at import
                # when ROCm's shared library is absent.
                return Availability.no(
                    f"amdsmi: import failed with {type(exc).__name__}: {_one_line(exc)} "
                    f"({_INSTALL})"
                )
        self._smi = smi
        self._error = getattr(smi, "AmdSmiException", Exception)
        try:
            flags = getattr(smi, "AmdSmiInitFlags", None)
            flag = getattr(flags, "INIT_AMD_GPUS", None) or getattr(flags, "AMD_GPUS", None)
            if flag is None:
                smi.amdsmi_init()
            else:
                smi.amdsmi_init(flag)
        except Exception as exc:  # noqa: BLE001 - probe() never raises
            return Availability.no(
                f"amdsmi: amdsmi_init failed: {_one_line(exc)} (is the amdgpu driver loaded?)"
            )
        self._initialised = True
        try:
            handles = list(smi.amdsmi_get_processor_handles())
        except Exception as exc:  # noqa: BLE001 - probe() never raises
            self.close()
            return Availability.no(f"amdsmi: listing devices failed: {_one_line(exc)}")
        order = visible_indexes(len(handles), self._environ)
        self._devices = {f"cuda:{i}": handles[index] for i, index in enumerate(order)}
        return Availability.yes()

    def probe(self) -> Availability:
        """Import and initialise amdsmi if needed; never raises."""
        return self._start()

    def close(self) -> None:
        """Shut amdsmi down (once; later calls do nothing).  The backend is then unusable."""
        if self._closed:
            return
        self._closed = True
        self._availability = Availability.no("amdsmi: the amdsmi backend was closed")
        self._devices = {}
        if self._initialised:
            self._initialised = False
            # Nothing useful can be done about a failed shutdown.
            with contextlib.suppress(Exception):
                self._smi.amdsmi_shut_down()

    # -- reading -----------------------------------------------------------------

    def devices(self) -> tuple[str, ...]:
        self._start()
        return tuple(self._devices)

    def _handle(self, device: str) -> Any:
        availability = self._start()
        if not availability.available:
            raise BackendUnavailable(availability.reason)
        try:
            return self._devices[device]
        except KeyError:
            names = ", ".join(self._devices) or "none"
            raise BackendUnavailable(f"amdsmi: no device {device} (amdsmi sees: {names})") from None

    def _memory(self, handle: Any) -> tuple[int | None, int | None]:
        """``(total, used)`` VRAM in bytes."""
        smi = self._smi
        kinds = getattr(smi, "AmdSmiMemoryType", None)
        vram = getattr(kinds, "VRAM", None)
        if (
            vram is not None
            and hasattr(smi, "amdsmi_get_gpu_memory_total")
            and hasattr(smi, "amdsmi_get_gpu_memory_usage")
        ):
            total = _int(smi.amdsmi_get_gpu_memory_total(handle, vram))
            used = _int(smi.amdsmi_get_gpu_memory_usage(handle, vram))
            return total, used
        usage = smi.amdsmi_get_gpu_vram_usage(handle)  # in MB
        total_mb, used_mb = _int(usage.get("vram_total")), _int(usage.get("vram_used"))
        return (
            None if total_mb is None else total_mb * _MIB,
            None if used_mb is None else used_mb * _MIB,
        )

    def _processes(self, handle: Any) -> dict[int, tuple[int | None, str]]:
        """``pid -> (vram bytes or None, name)``."""
        found: dict[int, tuple[int | None, str]] = {}
        for item in self._smi.amdsmi_get_gpu_process_list(handle):
            info = item
            if not isinstance(item, dict):
                try:
                    info = self._smi.amdsmi_get_gpu_process_info(handle, item)
                except self._error:
                    continue  # the process exited between the two calls
            entry = _process_entry(info)
            if entry is None:
                continue
            pid, used, name = entry
            if pid in found and found[pid][0] is not None:
                used = max(used or 0, found[pid][0] or 0)
            found[pid] = (used, name)
        return found

    def read(self, device: str) -> DeviceReading:
        handle = self._handle(device)
        try:
            total, used = self._memory(handle)
            usage = self._processes(handle)
        except self._error as exc:
            raise BackendUnavailable(f"amdsmi: reading {device} failed: {_one_line(exc)}") from exc
        return _reading(device, total, used, usage)

    def reset_peak(self, device: str) -> None:
        """amdsmi keeps no peak; nothing to reset."""

    def settle(self, device: str) -> None:
        """amdsmi cannot synchronise or free anything; the tracker polls instead."""


def _reading(
    device: str,
    total: int | None,
    used: int | None,
    usage: dict[int, tuple[int | None, str]],
) -> DeviceReading:
    tree = proctree.process_tree()
    me = os.getpid()
    ours = [usage[pid][0] for pid in usage if pid in tree]
    process_used = None if any(u is None for u in ours) else sum(u or 0 for u in ours)
    processes = tuple(
        ProcessUsage(pid=pid, used=u, name=proctree.cmdline(pid) or name)
        for pid, (u, name) in sorted(usage.items(), key=lambda kv: (-(kv[1][0] or 0), kv[0]))
        if u is not None
    )
    extra: dict[str, Any] = {
        "tree_pids": sorted(tree),
        "own_used": usage[me][0] if me in usage else 0,
    }
    unknown = sorted(pid for pid, (u, _) in usage.items() if u is None)
    if unknown:
        extra["used_unknown_pids"] = unknown
        extra["note"] = "amdsmi reports no VRAM figure for some processes"
    hidden = sorted(pid for pid in usage if not proctree.is_alive(pid))
    if hidden:
        # Exited since amdsmi listed them, or PIDs of another PID namespace (container).
        extra["pids_not_visible"] = hidden
    return DeviceReading(
        device=device,
        sources=("amdsmi",),
        driver_used=used,
        total=total,
        process_used=process_used,
        processes=processes,
        time=time.time(),
        extra=extra,
    )

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

import importlib
import os
from typing import Any

from memdiag.backends.driver import DriverBackend, driver_reading, one_line
from memdiag.values.readings import DeviceReading

__all__ = ["AmdSmiBackend", "visible_indexes"]

_INSTALL = "install ROCm's amdsmi; pip install memdiag[rocm]"
_MIB = 1024 * 1024


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


_Usage = dict[int, tuple[int | None, str]]
_Raw = tuple[int | None, int | None, _Usage]


class AmdSmiBackend(DriverBackend[Any, _Raw]):
    """Driver-side memory of AMD GPUs: VRAM total/used and per-process VRAM.

    ``module`` replaces ``amdsmi`` (tests pass a fake); by default ``amdsmi`` is
    imported on first use, never at import of this module.  ``environ`` replaces
    ``os.environ`` for the visibility variables.
    """

    name = "amdsmi"
    label = "amdsmi"
    sees = "amdsmi"

    def __init__(self, *, module: Any = None, environ: dict[str, str] | None = None) -> None:
        super().__init__(module=module)
        self._environ = environ

    # -- lifecycle ---------------------------------------------------------------

    def _import(self) -> Any:
        return importlib.import_module("amdsmi")

    def _import_failed(self, exc: BaseException) -> str:
        if isinstance(exc, ImportError):
            return f"amdsmi: {one_line(exc)} ({_INSTALL})"
        # The real package raises KeyError('libamd_smi.so') (or OSError) at import when
        # ROCm's shared library is absent.
        return f"amdsmi: import failed with {type(exc).__name__}: {one_line(exc)} ({_INSTALL})"

    def _error_type(self, lib: Any) -> type[BaseException]:
        error: type[BaseException] = getattr(lib, "AmdSmiException", Exception)
        return error

    def _initialise(self, lib: Any) -> None:
        flags = getattr(lib, "AmdSmiInitFlags", None)
        flag = getattr(flags, "INIT_AMD_GPUS", None) or getattr(flags, "AMD_GPUS", None)
        if flag is None:
            lib.amdsmi_init()
        else:
            lib.amdsmi_init(flag)

    def _init_failed(self, exc: BaseException) -> str:
        return f"amdsmi: amdsmi_init failed: {one_line(exc)} (is the amdgpu driver loaded?)"

    def _list(self, lib: Any) -> dict[str, Any]:
        handles = list(lib.amdsmi_get_processor_handles())
        order = visible_indexes(len(handles), self._environ)
        return {f"cuda:{i}": handles[index] for i, index in enumerate(order)}

    def _shutdown(self, lib: Any) -> None:
        lib.amdsmi_shut_down()

    # -- reading -----------------------------------------------------------------

    def _memory(self, handle: Any) -> tuple[int | None, int | None]:
        """``(total, used)`` VRAM in bytes."""
        smi = self._lib
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

    def _processes(self, handle: Any) -> _Usage:
        """``pid -> (vram bytes or None, name)``."""
        found: _Usage = {}
        for item in self._lib.amdsmi_get_gpu_process_list(handle):
            info = item
            if not isinstance(item, dict):
                try:
                    info = self._lib.amdsmi_get_gpu_process_info(handle, item)
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

    def _query(self, entry: Any) -> _Raw:
        total, used = self._memory(entry)
        return total, used, self._processes(entry)

    def _reading(self, device: str, entry: Any, raw: _Raw) -> DeviceReading:
        total, used, usage = raw
        return driver_reading(
            device,
            source="amdsmi",
            total=total,
            used=used,
            usage=usage,
            extra={},
            unknown_note="amdsmi reports no VRAM figure for some processes",
        )

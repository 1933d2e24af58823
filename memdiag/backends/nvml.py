"""Device memory as the NVIDIA driver sees it, through NVML (``nvidia-ml-py``'s ``pynvml``).

NVML knows what torch cannot: memory held outside the caching allocator (CUDA
context, cuBLAS/cuDNN workspaces, NCCL buffers, other libraries) and memory held by
the worker processes a test started.  It cannot see inside the allocator.

Devices are named in torch's numbering, ``cuda:N``, honouring ``CUDA_VISIBLE_DEVICES``
the way the CUDA runtime does: a comma list of NVML indexes, ``GPU-<uuid>`` prefixes or
``MIG-<uuid>`` names, read up to the first entry that names no device (or repeats
one); an empty value hides every device.  Without it devices follow NVML's index
order, which is PCI bus order: CUDA's own default order (``CUDA_DEVICE_ORDER=
FASTEST_FIRST``) agrees with it except on machines that mix GPU models.

Memory charged to this process is the sum over this process and its descendants
(:func:`memdiag.processes.proctree.process_tree`).  In a container NVML may report no
per-process figure (``usedGpuMemory`` is ``None``), or report PIDs of the host's PID
namespace: the reading then says so in ``extra`` rather than guess.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
import warnings
from collections.abc import Iterable
from typing import Any

from memdiag.backends.driver import DriverBackend, driver_reading, one_line
from memdiag.values.readings import DeviceReading

__all__ = ["NvmlBackend", "nvml_device_count", "visible_handles"]

_INSTALL = "install nvidia-ml-py"
_DRIVER_HINT = "NVML ships with the NVIDIA driver as libnvidia-ml.so.1; is the driver installed?"


def _import_pynvml() -> Any:
    with warnings.catch_warnings():
        # The old ``pynvml`` distribution warns at import that it is deprecated.
        warnings.simplefilter("ignore")
        return importlib.import_module("pynvml")


def _uuid(nvml: Any, handle: Any) -> str:
    value = nvml.nvmlDeviceGetUUID(handle)
    return value.decode() if isinstance(value, bytes) else str(value)


def _mig_devices(nvml: Any, error: type[BaseException], parents: Iterable[Any]) -> list[Any]:
    """Every MIG device handle under ``parents`` (none where MIG is off or unsupported)."""
    found: list[Any] = []
    for parent in parents:
        try:
            slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(parent))
        except error:
            continue
        for slot in range(slots):
            try:
                found.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, slot))
            except error:
                continue  # empty slot
    return found


def visible_handles(nvml: Any, spec: str | None) -> list[tuple[Any, str]]:
    """``(handle, uuid)`` per torch device index, for a ``CUDA_VISIBLE_DEVICES`` value.

    ``spec=None`` means the variable is unset: every NVML device in index order.
    Raises the module's ``NVMLError`` when NVML itself fails.
    """
    error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
    physical = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    uuids = [_uuid(nvml, h) for h in physical]
    if spec is None:
        return list(zip(physical, uuids, strict=True))

    mig: list[tuple[Any, str]] | None = None
    chosen: list[tuple[Any, str]] = []
    for raw in spec.split(","):
        entry = raw.strip()
        match: tuple[Any, str] | None = None
        lowered = entry.lower()
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if 0 <= index < len(physical):
                match = (physical[index], uuids[index])
        elif lowered.startswith("gpu-"):
            hits = [i for i, u in enumerate(uuids) if u.lower().startswith(lowered)]
            if len(hits) == 1:
                match = (physical[hits[0]], uuids[hits[0]])
        elif lowered.startswith("mig-"):
            try:
                match = (nvml.nvmlDeviceGetHandleByUUID(entry), entry)
            except error:
                if mig is None:
                    mig = [(h, _uuid(nvml, h)) for h in _mig_devices(nvml, error, physical)]
                mig_hits = [(h, u) for h, u in mig if u.lower().startswith(lowered)]
                if len(mig_hits) == 1:
                    match = mig_hits[0]
        # CUDA stops at the first entry that names no device, or names one twice.
        if match is None or any(match[1] == u for _, u in chosen):
            break
        chosen.append(match)
    return chosen


_Usage = dict[int, int | None]
_Raw = tuple[Any, _Usage]


class NvmlBackend(DriverBackend[tuple[Any, str], _Raw]):
    """Driver-side memory of NVIDIA GPUs: device total/used and per-process usage.

    ``module`` replaces ``pynvml`` (tests pass a fake); by default ``pynvml`` is
    imported on first use, never at import of this module.  ``visible_devices``
    overrides ``CUDA_VISIBLE_DEVICES`` (``None``: read the environment on first use).
    NVML is initialised once, on first use, and shut down once by :meth:`close`.
    """

    name = "nvml"
    label = "nvidia-ml-py"
    sees = "NVML"

    def __init__(self, *, module: Any = None, visible_devices: str | None = None) -> None:
        super().__init__(module=module)
        self._spec = visible_devices
        self._usage_seen: dict[str, tuple[tuple[int, int], _Usage]] = {}
        """UUID -> ((device used, free), per-process usage) of the last process listing."""
        self._last_reading: dict[str, tuple[_Usage, int, DeviceReading]] = {}
        """Device -> (the listing, the PID, the reading) of the last reading of a device
        that listed only this process: read again from the same listing, it stands."""

    # -- lifecycle ---------------------------------------------------------------

    def _import(self) -> Any:
        return _import_pynvml()

    def _import_failed(self, exc: BaseException) -> str:
        if isinstance(exc, ImportError):
            return f"nvidia-ml-py: {one_line(exc)}; {_INSTALL}"
        return (
            f"nvidia-ml-py: importing pynvml failed: {type(exc).__name__}: "
            f"{one_line(exc)}; reinstall nvidia-ml-py"
        )

    def _error_type(self, lib: Any) -> type[BaseException]:
        error: type[BaseException] = getattr(lib, "NVMLError", Exception)
        return error

    def _initialise(self, lib: Any) -> None:
        lib.nvmlInit()

    def _init_failed(self, exc: BaseException) -> str:
        return f"nvidia-ml-py: nvmlInit failed: {one_line(exc)} ({_DRIVER_HINT})"

    def _list(self, lib: Any) -> dict[str, tuple[Any, str]]:
        spec = os.environ.get("CUDA_VISIBLE_DEVICES") if self._spec is None else self._spec
        return {f"cuda:{i}": entry for i, entry in enumerate(visible_handles(lib, spec))}

    def _shutdown(self, lib: Any) -> None:
        lib.nvmlShutdown()

    # -- reading -----------------------------------------------------------------

    def uuid(self, device: str) -> str:
        """The NVML UUID (``GPU-…`` or ``MIG-…``) behind a ``cuda:N`` name."""
        return self._handle(device)[1]

    def _processes(self, handle: Any) -> _Usage:
        """``pid -> bytes`` (``None``: NVML cannot tell) over compute and graphics contexts."""
        usage: _Usage = {}
        lists = [self._lib.nvmlDeviceGetComputeRunningProcesses(handle)]
        graphics = getattr(self._lib, "nvmlDeviceGetGraphicsRunningProcesses", None)
        if graphics is not None:
            try:
                lists.append(graphics(handle))
            except self._error:
                pass  # not supported on this device (e.g. MIG); compute is what matters
        for processes in lists:
            for proc in processes:
                pid = int(proc.pid)
                used = proc.usedGpuMemory
                used = None if used is None else int(used)
                if pid in usage:
                    known = [u for u in (usage[pid], used) if u is not None]
                    usage[pid] = max(known) if known else None
                else:
                    usage[pid] = used
        return usage

    def recheck(self, device: str, reading: DeviceReading) -> dict[str, int] | None:
        """``{}`` when the device's used and free bytes equal those behind ``reading``
        (one NVML call: no process' memory on it changed since), else ``None``."""
        entry = self._handle(device)
        seen = self._usage_seen.get(entry[1])
        if seen is None or reading.driver_used != seen[0][0]:
            return None
        try:
            memory = self._lib.nvmlDeviceGetMemoryInfo(entry[0])
        except self._error:
            return None
        return {} if (int(memory.used), int(memory.free)) == seen[0] else None

    def _query(self, entry: tuple[Any, str]) -> _Raw:
        """Device memory, then the processes' usage.  The process listings (two calls,
        ~50 us on an H200 against ~8 us for the device's memory) are asked only when
        the device's used and free bytes moved since the last listing: while they are
        equal to the byte, no process' memory changed, so the last listing stands."""
        handle = entry[0]
        memory = self._lib.nvmlDeviceGetMemoryInfo(handle)
        device_key = (int(memory.used), int(memory.free))
        seen = self._usage_seen.get(entry[1])
        if seen is not None and seen[0] == device_key:
            return memory, seen[1]  # the same listing (read, never changed)
        usage = self._processes(handle)
        self._usage_seen[entry[1]] = (device_key, dict(usage))
        return memory, usage

    def _reading(self, device: str, entry: tuple[Any, str], raw: _Raw) -> DeviceReading:
        memory, usage = raw
        me = os.getpid()
        last = self._last_reading.get(device)
        if last is not None and last[0] is usage and last[1] == me:
            # The same listing (the device's bytes did not move) of this process alone:
            # the reading it gave stands.
            return dataclasses.replace(last[2], time=time.time())
        reading = driver_reading(
            device,
            source="nvml",
            total=int(memory.total),
            used=int(memory.used),
            usage={pid: (used, "") for pid, used in usage.items()},
            extra={"uuid": entry[1]},
            unknown_note=(
                "NVML reports no per-process memory for some processes "
                "(usedGpuMemory unavailable, as in many containers)"
            ),
        )
        if all(pid == me for pid in usage):
            self._last_reading[device] = (usage, me, reading)
        else:  # the tree around other processes is looked up again at every reading
            self._last_reading.pop(device, None)
        return reading


def nvml_device_count(*, module: Any = None, visible_devices: str | None = None) -> int:
    """How many ``cuda:N`` devices there are, asked of NVML: never initialises CUDA.

    Safe in a parent process that will fork workers (a CUDA context does not survive
    ``fork``; NVML is initialised and shut down again here).  ``0`` where NVML is
    unavailable.
    """
    backend = NvmlBackend(module=module, visible_devices=visible_devices)
    try:
        return len(backend.devices())
    finally:
        backend.close()

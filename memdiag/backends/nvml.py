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

import contextlib
import importlib
import os
import time
import warnings
from collections.abc import Iterable
from typing import Any

from memdiag.backends.base import Availability, BackendUnavailable
from memdiag.processes import proctree
from memdiag.values.readings import DeviceReading, ProcessUsage

__all__ = ["NvmlBackend", "nvml_device_count", "visible_handles"]

_INSTALL = "install nvidia-ml-py"
_DRIVER_HINT = "NVML ships with the NVIDIA driver as libnvidia-ml.so.1; is the driver installed?"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


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


class NvmlBackend:
    """Driver-side memory of NVIDIA GPUs: device total/used and per-process usage.

    ``module`` replaces ``pynvml`` (tests pass a fake); by default ``pynvml`` is
    imported on first use, never at import of this module.  ``visible_devices``
    overrides ``CUDA_VISIBLE_DEVICES`` (``None``: read the environment on first use).
    NVML is initialised once, on first use, and shut down once by :meth:`close`.
    """

    name = "nvml"

    def __init__(self, *, module: Any = None, visible_devices: str | None = None) -> None:
        self._module: Any = module
        self._spec = visible_devices
        self._availability: Availability | None = None
        self._nvml: Any = None
        self._error: type[BaseException] = Exception
        self._devices: dict[str, tuple[Any, str]] = {}
        self._initialised = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    def _start(self) -> Availability:
        if self._availability is not None:
            return self._availability
        self._availability = self._init()
        return self._availability

    def _init(self) -> Availability:
        nvml = self._module
        if nvml is None:
            try:
                nvml = _import_pynvml()
            except ImportError as exc:
                return Availability.no(f"nvidia-ml-py: {_one_line(exc)}; {_INSTALL}")
            except Exception as exc:  # noqa: BLE001 - a broken install must not crash us
                return Availability.no(
                    f"nvidia-ml-py: importing pynvml failed: {type(exc).__name__}: "
                    f"{_one_line(exc)}; reinstall nvidia-ml-py"
                )
        self._nvml = nvml
        self._error = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - probe() never raises
            return Availability.no(
                f"nvidia-ml-py: nvmlInit failed: {_one_line(exc)} ({_DRIVER_HINT})"
            )
        self._initialised = True
        spec = os.environ.get("CUDA_VISIBLE_DEVICES") if self._spec is None else self._spec
        try:
            handles = visible_handles(nvml, spec)
        except Exception as exc:  # noqa: BLE001 - probe() never raises
            self.close()
            return Availability.no(f"nvidia-ml-py: listing devices failed: {_one_line(exc)}")
        self._devices = {f"cuda:{i}": entry for i, entry in enumerate(handles)}
        return Availability.yes()

    def probe(self) -> Availability:
        """Initialise NVML if needed; never raises."""
        return self._start()

    def close(self) -> None:
        """Shut NVML down (once; later calls do nothing).  The backend is then unusable."""
        if self._closed:
            return
        self._closed = True
        self._availability = Availability.no("nvidia-ml-py: the nvml backend was closed")
        self._devices = {}
        if self._initialised:
            self._initialised = False
            # Nothing useful can be done about a failed shutdown.
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()

    # -- reading -----------------------------------------------------------------

    def devices(self) -> tuple[str, ...]:
        self._start()
        return tuple(self._devices)

    def uuid(self, device: str) -> str:
        """The NVML UUID (``GPU-…`` or ``MIG-…``) behind a ``cuda:N`` name."""
        return self._handle(device)[1]

    def _handle(self, device: str) -> tuple[Any, str]:
        availability = self._start()
        if not availability.available:
            raise BackendUnavailable(availability.reason)
        try:
            return self._devices[device]
        except KeyError:
            names = ", ".join(self._devices) or "none"
            raise BackendUnavailable(f"nvml: no device {device} (NVML sees: {names})") from None

    def _processes(self, handle: Any) -> dict[int, int | None]:
        """``pid -> bytes`` (``None``: NVML cannot tell) over compute and graphics contexts."""
        usage: dict[int, int | None] = {}
        lists = [self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        graphics = getattr(self._nvml, "nvmlDeviceGetGraphicsRunningProcesses", None)
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

    def read(self, device: str) -> DeviceReading:
        handle, uuid = self._handle(device)
        try:
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            usage = self._processes(handle)
        except self._error as exc:
            raise BackendUnavailable(f"nvml: reading {device} failed: {_one_line(exc)}") from exc
        return _reading(device, uuid, int(memory.total), int(memory.used), usage)

    def reset_peak(self, device: str) -> None:
        """NVML keeps no peak; nothing to reset."""

    def settle(self, device: str) -> None:
        """NVML cannot synchronise or free anything; the tracker polls instead."""


def _reading(
    device: str, uuid: str, total: int, used: int, usage: dict[int, int | None]
) -> DeviceReading:
    me = os.getpid()
    # The passing path must stay cheap: scan /proc for the process tree only when the
    # device lists processes other than this one, and name only the tree's processes.
    others = [pid for pid in usage if pid != me]
    tree = proctree.process_tree() if others else frozenset({me})
    unknown = sorted(pid for pid, u in usage.items() if u is None)
    ours = [usage[pid] for pid in usage if pid in tree]
    process_used = None if any(u is None for u in ours) else sum(u or 0 for u in ours)
    processes = tuple(
        ProcessUsage(pid=pid, used=u, name=proctree.cmdline(pid) if pid in tree else "")
        for pid, u in sorted(usage.items(), key=lambda item: (-(item[1] or 0), item[0]))
        if u is not None
    )
    extra: dict[str, Any] = {
        "uuid": uuid,
        "tree_pids": sorted(tree),
        "own_used": usage.get(me, 0),
    }
    if unknown:
        extra["used_unknown_pids"] = unknown
        extra["note"] = (
            "NVML reports no per-process memory for some processes "
            "(usedGpuMemory unavailable, as in many containers)"
        )
    hidden = sorted(pid for pid in others if pid not in tree and not proctree.is_alive(pid))
    if hidden:
        # Exited since NVML listed them, or PIDs of another PID namespace (container).
        extra["pids_not_visible"] = hidden
    return DeviceReading(
        device=device,
        sources=("nvml",),
        driver_used=used,
        total=total,
        process_used=process_used,
        processes=processes,
        time=time.time(),
        extra=extra,
    )


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

"""A hand-written stand-in for ROCm's ``amdsmi`` Python package that speaks its API.

Shapes follow ``py-interface/amdsmi_interface.py`` (ROCm 6.x/7.x):

- ``amdsmi_get_gpu_memory_total/usage(h, AmdSmiMemoryType.VRAM)`` -> bytes;
- ``amdsmi_get_gpu_vram_usage(h)`` -> ``{"vram_total", "vram_used"}`` in MB;
- ``amdsmi_get_gpu_process_list(h)`` -> dicts with ``name``, ``pid``, ``mem``,
  ``engine_usage``, ``memory_usage: {gtt_mem, cpu_mem, vram_mem}`` (bytes) in current
  releases; process handles for ``amdsmi_get_gpu_process_info(h, p)`` in older ones
  (:class:`LegacyFakeAmdSmi`, which also lacks the byte-precise memory calls);
- errors: ``AmdSmiException``, ``AmdSmiLibraryException(err_code)``.

Scriptable like :mod:`fake_pynvml`: change a device's ``used``/``processes`` between
reads, set ``init_error``, or ``fail["amdsmi_get_gpu_process_list"] = code``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

AMDSMI_STATUS_SUCCESS = 0
AMDSMI_STATUS_NOT_SUPPORTED = 2
AMDSMI_STATUS_INIT_ERROR = 8
AMDSMI_STATUS_NOT_FOUND = 31
AMDSMI_STATUS_NOT_INIT = 32
AMDSMI_STATUS_DRIVER_NOT_LOADED = 34

_INFO = {
    AMDSMI_STATUS_NOT_SUPPORTED: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
    AMDSMI_STATUS_INIT_ERROR: "AMDSMI_STATUS_INIT_ERROR - Initialization error",
    AMDSMI_STATUS_NOT_FOUND: "AMDSMI_STATUS_NOT_FOUND - Device Not found",
    AMDSMI_STATUS_NOT_INIT: "AMDSMI_STATUS_NOT_INIT - Device not initialized",
    AMDSMI_STATUS_DRIVER_NOT_LOADED: "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded",
}
_MB = 1024 * 1024


class AmdSmiException(Exception):
    """Base smi exception class."""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int) -> None:
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = _INFO.get(
            err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred"
        )

    def __str__(self) -> str:
        return f"An error occured with code: {self.err_code}({self.err_info})"


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1 << 0
    INIT_AMD_GPUS = 1 << 1
    INIT_NON_AMD_CPUS = 1 << 2
    INIT_NON_AMD_GPUS = 1 << 3


class AmdSmiMemoryType(IntEnum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


# Module-level names for annotations: inside FakeAmdSmi the class attributes shadow them.
_InitFlags = AmdSmiInitFlags
_MemoryType = AmdSmiMemoryType


@dataclass(eq=False)
class FakeAmdGpu:
    """One GPU; the object itself is the processor handle.

    ``processes``: ``pid -> VRAM bytes`` (``None``: the driver answers ``'N/A'``).
    """

    total: int
    used: int = 0
    processes: dict[int, int | None] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessHandle:
    """Older releases' ``amdsmi_process_handle_t``."""

    value: int


class FakeAmdSmi:
    """Pass an instance where the ``amdsmi`` module is expected."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiInitFlags = AmdSmiInitFlags
    AmdSmiMemoryType = AmdSmiMemoryType

    process_handles = False  # current releases: the process list holds dicts

    def __init__(
        self, devices: list[FakeAmdGpu] | None = None, *, init_error: int | None = None
    ) -> None:
        self.devices = list(devices or [])
        self.init_error = init_error
        self.fail: dict[str, int] = {}
        self.vanished: set[int] = set()  # pids whose info lookup fails (exited)
        self.init_flags: list[int] = []
        self.shutdown_calls = 0
        self._initialised = False

    def _call(self, name: str) -> None:
        if not self._initialised:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)
        if name in self.fail:
            raise AmdSmiLibraryException(self.fail[name])

    def amdsmi_init(self, flag: _InitFlags = _InitFlags.INIT_AMD_GPUS) -> None:
        self.init_flags.append(flag)
        if self.init_error is not None:
            raise AmdSmiLibraryException(self.init_error)
        self._initialised = True

    def amdsmi_shut_down(self) -> None:
        self._call("amdsmi_shut_down")
        self.shutdown_calls += 1
        self._initialised = False

    def amdsmi_get_processor_handles(self) -> list[FakeAmdGpu]:
        self._call("amdsmi_get_processor_handles")
        return list(self.devices)

    def amdsmi_get_gpu_memory_total(self, handle: FakeAmdGpu, mem_type: _MemoryType) -> int:
        self._call("amdsmi_get_gpu_memory_total")
        assert mem_type == _MemoryType.VRAM
        return handle.total

    def amdsmi_get_gpu_memory_usage(self, handle: FakeAmdGpu, mem_type: _MemoryType) -> int:
        self._call("amdsmi_get_gpu_memory_usage")
        assert mem_type == _MemoryType.VRAM
        return handle.used

    def amdsmi_get_gpu_vram_usage(self, handle: FakeAmdGpu) -> dict[str, int]:
        self._call("amdsmi_get_gpu_vram_usage")
        return {"vram_total": handle.total // _MB, "vram_used": handle.used // _MB}

    def _info(self, handle: FakeAmdGpu, pid: int) -> dict[str, Any]:
        vram = handle.processes[pid]
        return {
            "name": handle.names.get(pid, "N/A"),
            "pid": pid,
            "mem": "N/A" if vram is None else vram,
            "engine_usage": {"gfx": 0, "enc": 0},
            "memory_usage": {
                "gtt_mem": 0,
                "cpu_mem": 0,
                "vram_mem": "N/A" if vram is None else vram,
            },
            "cu_occupancy": "N/A",
        }

    def amdsmi_get_gpu_process_list(self, handle: FakeAmdGpu) -> list[Any]:
        self._call("amdsmi_get_gpu_process_list")
        if self.process_handles:
            return [ProcessHandle(pid) for pid in handle.processes]
        return [self._info(handle, pid) for pid in handle.processes]

    def amdsmi_get_gpu_process_info(
        self, handle: FakeAmdGpu, process: ProcessHandle
    ) -> dict[str, Any]:
        self._call("amdsmi_get_gpu_process_info")
        if process.value in self.vanished or process.value not in handle.processes:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_FOUND)
        return self._info(handle, process.value)


class LegacyFakeAmdSmi(FakeAmdSmi):
    """An older amdsmi: VRAM only in MB, and the process list holds handles."""

    process_handles = True
    _MISSING = frozenset({"amdsmi_get_gpu_memory_total", "amdsmi_get_gpu_memory_usage"})

    def __getattribute__(self, name: str) -> Any:
        if name in type(self)._MISSING:
            raise AttributeError(name)
        return super().__getattribute__(name)

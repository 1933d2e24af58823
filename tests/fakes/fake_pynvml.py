"""A hand-written stand-in for ``pynvml`` (nvidia-ml-py) that speaks its API.

Same function names, error codes, exception classes (``NVMLError`` and its
``NVMLError_<Name>`` subclasses, ``str()`` as pynvml words it) and return shapes
(memory info with ``.total/.free/.used``; process objects with ``.pid`` and
``.usedGpuMemory``, ``None`` where the driver cannot tell).

Scriptable: ``FakeNvml(devices=[FakeGpu(...), ...])`` is passed where the module
would be; tests change a device's ``used``/``processes`` between reads, set
``init_error`` to make ``nvmlInit`` fail, or ``fail["nvmlDeviceGetMemoryInfo"] =
NVML_ERROR_GPU_IS_LOST`` to make one call raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """As in pynvml: carries ``.value`` (the NVML return code)."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_Uninitialized(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_UNINITIALIZED)


class NVMLError_InvalidArgument(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_INVALID_ARGUMENT)


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


class NVMLError_NotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_FOUND)


class NVMLError_DriverNotLoaded(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_DRIVER_NOT_LOADED)


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_LIBRARY_NOT_FOUND)


class NVMLError_GpuIsLost(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_GPU_IS_LOST)


_CLASSES: dict[int, Callable[[], NVMLError]] = {
    NVML_ERROR_UNINITIALIZED: NVMLError_Uninitialized,
    NVML_ERROR_INVALID_ARGUMENT: NVMLError_InvalidArgument,
    NVML_ERROR_NOT_SUPPORTED: NVMLError_NotSupported,
    NVML_ERROR_NOT_FOUND: NVMLError_NotFound,
    NVML_ERROR_DRIVER_NOT_LOADED: NVMLError_DriverNotLoaded,
    NVML_ERROR_LIBRARY_NOT_FOUND: NVMLError_LibraryNotFound,
    NVML_ERROR_GPU_IS_LOST: NVMLError_GpuIsLost,
}


def error(value: int) -> NVMLError:
    """The exception pynvml raises for return code ``value`` (its specific subclass)."""
    cls = _CLASSES.get(value)
    return cls() if cls is not None else NVMLError(value)


@dataclass
class Memory:
    """``c_nvmlMemory_t``: bytes."""

    total: int
    free: int
    used: int


@dataclass
class ProcessInfo:
    """pynvml's friendly process object; ``usedGpuMemory`` is ``None`` when unavailable."""

    pid: int
    usedGpuMemory: int | None
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass(eq=False)
class FakeGpu:
    """One device (or MIG instance); the object itself is the NVML handle.

    ``processes``/``graphics``: ``pid -> bytes`` (``None``: NVML cannot tell) of the
    compute / graphics contexts.  ``mig``: MIG instances (``None``: MIG unsupported).
    """

    uuid: str
    total: int
    used: int = 0
    processes: dict[int, int | None] = field(default_factory=dict)
    graphics: dict[int, int | None] = field(default_factory=dict)
    mig: list[FakeGpu | None] | None = None
    lost: bool = False


class FakeNvml:
    """Pass an instance where the ``pynvml`` module is expected."""

    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost

    def __init__(
        self,
        devices: list[FakeGpu] | None = None,
        *,
        init_error: int | None = None,
        graphics_supported: bool = True,
    ) -> None:
        self.devices = list(devices or [])
        self.init_error = init_error
        self.graphics_supported = graphics_supported
        self.fail: dict[str, int] = {}
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: list[str] = []
        self._refcount = 0

    # -- plumbing ------------------------------------------------------------------

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self._refcount <= 0:
            raise error(NVML_ERROR_UNINITIALIZED)
        if name in self.fail:
            raise error(self.fail[name])

    def _live(self, handle: FakeGpu) -> FakeGpu:
        if handle.lost:
            raise error(NVML_ERROR_GPU_IS_LOST)
        return handle

    # -- the API -------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise error(self.init_error)
        self._refcount += 1

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")
        self.shutdown_calls += 1
        self._refcount -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._call("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.devices):
            raise error(NVML_ERROR_INVALID_ARGUMENT)
        return self.devices[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self._call("nvmlDeviceGetHandleByUUID")
        for gpu in self.devices:
            for candidate in [gpu, *(gpu.mig or [])]:
                if candidate is not None and candidate.uuid == uuid:
                    return candidate
        raise error(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        self._call("nvmlDeviceGetUUID")
        return self._live(handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> Memory:
        self._call("nvmlDeviceGetMemoryInfo")
        gpu = self._live(handle)
        return Memory(total=gpu.total, free=gpu.total - gpu.used, used=gpu.used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[ProcessInfo]:
        self._call("nvmlDeviceGetComputeRunningProcesses")
        gpu = self._live(handle)
        return [ProcessInfo(pid, used) for pid, used in gpu.processes.items()]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeGpu) -> list[ProcessInfo]:
        self._call("nvmlDeviceGetGraphicsRunningProcesses")
        gpu = self._live(handle)
        if not self.graphics_supported:
            raise error(NVML_ERROR_NOT_SUPPORTED)
        return [ProcessInfo(pid, used) for pid, used in gpu.graphics.items()]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu) -> int:
        self._call("nvmlDeviceGetMaxMigDeviceCount")
        if self._live(handle).mig is None:
            raise error(NVML_ERROR_NOT_SUPPORTED)
        return len(handle.mig or [])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeGpu, index: int) -> FakeGpu:
        self._call("nvmlDeviceGetMigDeviceHandleByIndex")
        slots = self._live(handle).mig
        if slots is None:
            raise error(NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= index < len(slots):
            raise error(NVML_ERROR_INVALID_ARGUMENT)
        instance = slots[index]
        if instance is None:
            raise error(NVML_ERROR_NOT_FOUND)
        return instance

"""Which backends exist, which are usable here, and ``auto`` selection."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from memdiag.backends.base import Availability, Backend, BackendUnavailable
from memdiag.backends.torch_backend import HOST_PINNED, TorchBackend

__all__ = ["BACKENDS", "Selection", "UsageError", "create", "probe_all", "select"]


class UsageError(ValueError):
    """A device or backend name the user gave cannot be used; the message says why."""


# name -> (module, class): imported only when asked for, so vendor libraries stay lazy.
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("memdiag.backends.torch_backend", "TorchBackend"),
    "nvml": ("memdiag.backends.nvml", "NvmlBackend"),
    "amdsmi": ("memdiag.backends.amdsmi_backend", "AmdSmiBackend"),
    "cpu": ("memdiag.backends.cpu", "CpuBackend"),
    "fake": ("memdiag.backends.fake", "FakeBackend"),
}


def create(name: str) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    factory: Callable[[], Backend] = getattr(importlib.import_module(module_name), class_name)
    return factory()


def probe_all() -> list[tuple[Backend | None, str, Availability]]:
    """Every backend with its availability; never raises."""
    result: list[tuple[Backend | None, str, Availability]] = []
    for name in BACKENDS:
        try:
            backend = create(name)
            result.append((backend, name, backend.probe()))
        except Exception as exc:  # noqa: BLE001 - one broken backend must not hide others
            result.append((None, name, Availability.no(f"{type(exc).__name__}: {exc}")))
    return result


@dataclass(frozen=True)
class Selection:
    """The backends a tracker reads and the devices it checks."""

    backends: tuple[Backend, ...]
    devices: tuple[str, ...]
    notices: tuple[str, ...] = ()

    def readers(self, device: str) -> tuple[Backend, ...]:
        """The backends that read ``device`` (asked once: this is on every reading)."""
        return self._reader_map.get(device, ())

    @cached_property
    def _reader_map(self) -> dict[str, tuple[Backend, ...]]:
        found: dict[str, list[Backend]] = {}
        for backend in self.backends:
            try:
                names = backend.devices()
            except BackendUnavailable:
                continue
            for device in names:
                found.setdefault(device, []).append(backend)
        return {device: tuple(backends) for device, backends in found.items()}


def _driver_backend() -> str | None:
    torch = sys.modules.get("torch")
    version = getattr(torch, "version", None)
    return "amdsmi" if getattr(version, "hip", None) else "nvml"


def select(spec: str = "auto") -> Selection:
    """Resolve ``auto``, ``cpu``, ``cuda``, ``cuda:0,cuda:1`` or ``fake`` into backends.

    ``auto``: every accelerator torch sees (plus NVML or amdsmi for driver-level and
    per-process readings when available), else the CPU tensor census.
    """
    spec = (spec or "auto").strip()
    notices: list[str] = []
    if spec == "cpu":
        return _only("cpu", notices)
    if spec == "fake":
        return _only("fake", notices)
    torch_backend = create("torch")
    availability = torch_backend.probe()
    if not availability.available:
        if spec == "auto":
            notices.append(f"no accelerator: {availability.reason}; checking CPU tensors")
            return _only("cpu", notices)
        raise UsageError(f"device {spec!r} cannot be checked: {availability.reason}")
    devices = torch_backend.devices()
    if spec != "auto":
        wanted = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if part == "cpu":
                wanted.append("cpu")
                continue
            matches = [d for d in devices if d == part or d.split(":")[0] == part]
            if not matches:
                raise UsageError(
                    f"device {part!r} is not visible; visible devices: {', '.join(devices)}"
                )
            if ":" not in part and HOST_PINNED in devices:
                matches.append(HOST_PINNED)  # "cuda": every GPU and pinned host memory
            wanted.extend(m for m in matches if m not in wanted)
        devices = tuple(wanted)
    backends: list[Backend] = [torch_backend]
    driver = _driver_backend()
    if driver is not None:
        extra = create(driver)
        extra_availability = extra.probe()
        if extra_availability.available:
            backends.append(extra)
            if isinstance(torch_backend, TorchBackend):
                torch_backend.device_wide = False  # the driver backend reads it
        else:
            notices.append(
                f"{driver} unavailable ({extra_availability.reason}): no driver-level "
                "or per-process readings"
            )
    if "cpu" in devices:
        backends.append(create("cpu"))
    return Selection(tuple(backends), tuple(devices), tuple(notices))


def _only(name: str, notices: list[str]) -> Selection:
    backend = create(name)
    availability = backend.probe()
    if not availability.available:
        raise UsageError(f"backend {name!r} is unavailable: {availability.reason}")
    return Selection((backend,), backend.devices(), tuple(notices))

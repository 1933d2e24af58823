"""The torch backend over a fake ``torch`` (no GPU here): the passing path calls
``torch._C``'s CUDA entry points directly, and falls back to ``torch.cuda``'s
wrappers where a build lacks them."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from memdiag.backends.torch_backend import HOST_PINNED, TorchBackend


class FakeC:
    """``torch._C``: a caching allocator's counters and what was called."""

    def __init__(self) -> None:
        self.allocated = 1 << 20
        self.reserved = 2 << 20
        self.pinned = 4096
        self.current = 0
        self.calls: list[str] = []

    def _cuda_memoryStats(self, index: int) -> dict[str, Any]:
        self.calls.append(f"stats {index}")

        def counter(current: int) -> dict[str, dict[str, int]]:
            return {"all": {"current": current, "peak": current * 2}}

        return {
            "allocated_bytes": counter(self.allocated),
            "reserved_bytes": counter(self.reserved),
            "active_bytes": counter(self.allocated),
            "segment": {"all": {"allocated": 3, "freed": 1}},
        }

    def _cuda_hostMemoryStats(self) -> dict[str, Any]:
        return {"allocated_bytes": {"current": self.pinned, "peak": self.pinned}}

    def _cuda_getDevice(self) -> int:
        return self.current

    def _cuda_synchronize(self) -> None:
        self.calls.append(f"sync current {self.current}")

    def _cuda_resetPeakMemoryStats(self, index: int) -> None:
        self.calls.append(f"reset {index}")

    def _cuda_clearCublasWorkspaces(self) -> None:
        self.calls.append("clear cublas")

    def _host_emptyCache(self) -> None:
        self.calls.append("empty pinned")


def _fake_torch(c: object, calls: list[str]) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.version = types.SimpleNamespace(cuda="13.0", hip=None)  # type: ignore[attr-defined]

    def is_initialized() -> bool:
        calls.append("is_initialized")
        return True

    def memory_stats(index: int) -> dict[str, int]:
        calls.append(f"memory_stats {index}")
        return {
            "allocated_bytes.all.current": 5,
            "reserved_bytes.all.current": 8,
            "active_bytes.all.current": 5,
        }

    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        device_count=lambda: 2,
        is_initialized=is_initialized,
        synchronize=lambda index: calls.append(f"torch.cuda.synchronize {index}"),
        memory_stats=memory_stats,
        reset_peak_memory_stats=lambda index: calls.append(f"torch.cuda.reset {index}"),
    )
    torch._C = c  # type: ignore[attr-defined]
    return torch


@pytest.fixture
def fake_c(monkeypatch: pytest.MonkeyPatch) -> FakeC:
    c = FakeC()
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(c, c.calls))
    return c


def _backend() -> TorchBackend:
    backend = TorchBackend()
    assert backend.probe().available
    backend.device_wide = False
    return backend


def test_reads_the_nested_counters_and_knows_when_they_did_not_move(fake_c: FakeC) -> None:
    backend = _backend()
    assert backend.devices() == ("cuda:0", "cuda:1", HOST_PINNED)
    reading = backend.read("cuda:0")
    assert (reading.allocated, reading.reserved, reading.active) == (1 << 20, 2 << 20, 1 << 20)
    assert reading.peak_allocated == 2 << 20
    assert backend.recheck("cuda:0", reading) == {
        "peak_allocated": 2 << 20,
        "peak_reserved": 4 << 20,
    }
    fake_c.allocated += 512
    assert backend.recheck("cuda:0", reading) is None
    pinned = backend.read(HOST_PINNED)
    assert pinned.allocated == 4096
    assert backend.recheck(HOST_PINNED, pinned) == {"peak_allocated": 4096}
    fake_c.pinned = 0
    assert backend.recheck(HOST_PINNED, pinned) is None


def test_settle_synchronises_the_current_device_directly_and_others_through_torch(
    fake_c: FakeC,
) -> None:
    backend = _backend()
    backend.read("cuda:0")
    backend.read("cuda:1")
    fake_c.calls.clear()
    backend.settle("cuda:0")
    backend.settle("cuda:1")
    backend.reset_peak("cuda:1")
    assert fake_c.calls == [
        "sync current 0",
        "clear cublas",
        "torch.cuda.synchronize 1",
        "clear cublas",
        "reset 1",
    ]


def test_asks_whether_cuda_is_initialised_once_per_process(fake_c: FakeC) -> None:
    backend = _backend()
    for _ in range(3):
        backend.read("cuda:0")
    assert fake_c.calls.count("is_initialized") == 1


def test_a_build_without_the_entry_points_goes_through_torch_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(types.SimpleNamespace(), calls))
    backend = _backend()
    reading = backend.read("cuda:0")
    assert (reading.allocated, reading.reserved) == (5, 8)
    assert backend.recheck("cuda:0", reading) is None  # no cheap way to tell: read again
    backend.settle("cuda:0")
    backend.reset_peak("cuda:0")
    assert calls[-2:] == ["torch.cuda.synchronize 0", "torch.cuda.reset 0"]

"""GPU-only behaviour, run on the device machine: `python -m pytest tests/gpu -m gpu`.

Skipped without CUDA (CI has no GPU).  Each test is a real leak or a real
non-leak on a real device; the readings it relies on are recorded in README.md.
"""

from __future__ import annotations

import functools
import gc

import pytest
import torch

import memdiag
from memdiag.values.findings import FindingKind

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MiB = 1024**2


@functools.cache
def _supports_kw(fn: object, kw: str) -> bool:
    return True


@pytest.fixture(autouse=True)
def _warm() -> None:
    # Context and cuBLAS handle exist before each baseline, as in a long test session.
    (torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")).sum().item()
    torch.cuda.empty_cache()


def test_allocator_cache_is_told_apart_from_live_tensors() -> None:
    with memdiag.track(device="cuda:0", settle=0.2) as tracker:
        x = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
        del x  # reserved, not allocated
    result = tracker.result
    assert result is not None and not result.leaked, result.summary()
    cache = [f for f in result.findings if f.kind is FindingKind.ALLOCATOR_CACHE]
    assert cache and cache[0].nbytes >= 256 * MiB
    final = result.devices[0].final
    assert final.process_used is not None and final.process_used >= final.reserved  # type: ignore[operator]
    torch.cuda.empty_cache()


def test_lru_cache_of_a_bound_method_keeps_cuda_weights() -> None:
    model = torch.nn.Linear(2048, 2048).cuda()
    tracker = memdiag.Tracker(device="cuda:0", settle=0.2).start()
    model2 = torch.nn.Linear(2048, 2048).cuda()
    _supports_kw(model2.forward, "x")
    del model2
    result = tracker.check()
    tracker.close()
    _supports_kw.cache_clear()
    assert result.leaked, (result.summary(), result.findings)
    leak = result.leaks[0]
    assert leak.kind is FindingKind.LIVE_TENSORS
    assert leak.nbytes >= 2048 * 2048 * 4
    del model


def test_a_cublas_workspace_alive_at_baseline_cannot_hide_a_leak() -> None:
    (torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda")).sum().item()
    keep = []
    with memdiag.track(device="cuda:0", settle=0.2) as tracker:
        keep.append(torch.empty(24 * MiB, dtype=torch.uint8, device="cuda"))
    assert tracker.result is not None and tracker.result.leaked, tracker.result.summary()
    assert tracker.result.leaks[0].nbytes == 24 * MiB
    del keep


def test_cublas_workspace_is_not_a_leak() -> None:
    torch._C._cuda_clearCublasWorkspaces()
    with memdiag.track(device="cuda:0", settle=0.2) as tracker:
        a = torch.randn(512, 512, device="cuda")
        (a @ a).sum().item()
        del a
    assert tracker.result is not None and not tracker.result.leaked, tracker.result.summary()


def test_gc_frozen_cycle_holding_cuda_tensors() -> None:
    class Node:
        pass

    with memdiag.track(device="cuda:0", settle=0.2) as tracker:
        a, b = Node(), Node()
        a.peer, b.peer = b, a  # type: ignore[attr-defined]
        a.weight = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")  # type: ignore[attr-defined]
        del a, b
        gc.freeze()
    try:
        result = tracker.result
        assert result is not None and result.leaked
        assert result.leaks[0].kind is FindingKind.GC_FROZEN
        assert result.leaks[0].nbytes == 64 * MiB
    finally:
        gc.unfreeze()
        gc.collect()

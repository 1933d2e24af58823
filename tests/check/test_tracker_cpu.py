"""Real leaks of real CPU tensors, caught by the CPU census backend."""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterator

import pytest
import torch

import memdiag
from memdiag.values.findings import FindingKind


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(512, 512) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@functools.cache
def supports_kw(fn: object, kw: str) -> bool:
    return kw == "x"


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    supports_kw.cache_clear()
    gc.collect()


def test_lru_cache_keyed_by_a_bound_method_keeps_the_model() -> None:
    with memdiag.track(device="cpu", settle=0.0, analyze=False) as tracker:
        memdiag.phase("create")
        model = Model()
        memdiag.phase("infer")
        supports_kw(model.forward, "x")
        model(torch.zeros(2, 512))
        memdiag.phase("shutdown")
        del model
    result = tracker.result
    assert result is not None and result.leaked
    (leak,) = result.leaks
    assert leak.kind is FindingKind.LIVE_TENSORS
    assert leak.nbytes == 4 * (512 * 512 + 512) * 4
    assert leak.tensors[0].count == 4
    assert leak.tensors[0].example.shape == (512, 512)
    assert leak.tensors[0].example.type_name == "Parameter"


def test_the_fixed_engine_passes() -> None:
    with memdiag.track(device="cpu", settle=0.0) as tracker:
        model = Model()
        supports_kw(type(model).forward, "x")
        model(torch.zeros(2, 512))
        del model
    assert tracker.result is not None and not tracker.result.leaked


def test_gc_freeze_without_unfreeze_is_classified_as_gc_frozen() -> None:
    freeze_before = gc.get_freeze_count()
    with memdiag.track(device="cpu", settle=0.0, analyze=False) as tracker:
        model = Model()
        model.engine_ref = [model]  # type: ignore[assignment]  # a reference cycle
        gc.freeze()
        del model
    try:
        result = tracker.result
        assert result is not None and result.leaked
        kinds = {f.kind for f in result.leaks}
        assert kinds == {FindingKind.GC_FROZEN}
        assert "gc.unfreeze()" in result.leaks[0].advice
        assert gc.get_freeze_count() > freeze_before  # memdiag did not unfreeze it
    finally:
        gc.unfreeze()
        gc.collect()


def test_a_tiny_leak_below_tolerance_passes() -> None:
    keep = []
    with memdiag.track(device="cpu", settle=0.0) as tracker:
        keep.append(torch.zeros(1000))  # 4 KB, under the 1 MiB default
    assert tracker.result is not None and not tracker.result.leaked
    del keep


def test_the_tracker_holds_no_reference_after_the_check() -> None:
    import weakref

    with memdiag.track(device="cpu", settle=0.0) as tracker:
        leaked = torch.zeros(512, 1024)
        ref = weakref.ref(leaked)
    assert tracker.result is not None and tracker.result.leaked
    del leaked
    gc.collect()
    assert ref() is None

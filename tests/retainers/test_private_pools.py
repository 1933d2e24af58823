"""Reserved memory a live private pool keeps is a leak with its owner named; the
allocator-cache note claims only what ``empty_cache()`` can return.

Scripted allocator readings (no GPU here) and a real owner object: torch.compile's
``CUDAGraphTreeManager`` class, built without CUDA, holding a pool id as it does."""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator

import pytest

from memdiag.backends.fake import FakeBackend
from memdiag.backends.registry import Selection
from memdiag.check.tracker import Tracker
from memdiag.retainers.pools import live_pools
from memdiag.values.findings import FindingKind

MiB = 1024**2
POOL = (0, 7)


def _tracker(fake: FakeBackend, **kw: object) -> Tracker:
    return Tracker(device=Selection((fake,), fake.devices()), settle=0.0, **kw)  # type: ignore[arg-type]


@pytest.fixture
def tree_manager() -> Iterator[object]:
    trees = pytest.importorskip("torch._inductor.cudagraph_trees")
    manager = trees.CUDAGraphTreeManager.__new__(trees.CUDAGraphTreeManager)
    manager.cuda_graphs_thread_pool = POOL
    yield manager


def _graph_kept(fake: FakeBackend) -> None:
    fake.set("cuda:0", reserved=130 * MiB)  # captured, outputs and model freed since
    fake.set_pool("cuda:0", POOL, 130 * MiB, 0)


def test_pool_kept_by_a_live_owner_is_a_leak_named_by_its_root(
    tree_manager: object, leak_module: types.ModuleType
) -> None:
    fake = FakeBackend(["cuda:0"])
    with _tracker(fake) as tracker:
        leak_module.ENGINE = {"graphs": tree_manager}
        _graph_kept(fake)
    result = tracker.result
    assert result is not None and result.leaked
    first = result.findings[0]
    assert first.kind is FindingKind.PRIVATE_POOL and first.is_leak
    assert first.nbytes == 130 * MiB
    assert "(0, 7) of CUDAGraphTreeManager" in first.message
    assert "empty_cache() cannot return it" in first.message
    chain = first.retainers[0].chain_text()
    assert chain.startswith(f"{leak_module.__name__}.ENGINE -> ['graphs']"), chain
    assert "CUDAGraphTreeManager owning private pool (0, 7), 130.0 MiB" in chain
    # No advice that empty_cache() would return the pool's memory.
    assert not [f for f in result.findings if f.kind is FindingKind.ALLOCATOR_CACHE]


def test_pool_without_owner_is_cache_that_empty_cache_returns() -> None:
    fake = FakeBackend(["cuda:0"])
    with _tracker(fake) as tracker:
        _graph_kept(fake)  # same memory, but no object owns pool (0, 7) any more
    result = tracker.result
    assert result is not None and not result.leaked, result.findings
    (cache,) = [f for f in result.findings if f.kind is FindingKind.ALLOCATOR_CACHE]
    assert cache.nbytes == 130 * MiB
    assert "empty_cache() would return 130.0 MiB" in cache.advice


def test_cache_note_counts_only_what_empty_cache_can_return(tree_manager: object) -> None:
    fake = FakeBackend(["cuda:0"])
    with _tracker(fake) as tracker:
        keep = tree_manager
        fake.set("cuda:0", reserved=(130 + 64) * MiB)  # a kept pool and 64 MiB of cache
        fake.set_pool("cuda:0", POOL, 130 * MiB, 0)
    del keep
    result = tracker.result
    assert result is not None and result.leaked
    kinds = [f.kind for f in result.findings]
    assert kinds[0] is FindingKind.PRIVATE_POOL
    (cache,) = [f for f in result.findings if f.kind is FindingKind.ALLOCATOR_CACHE]
    assert cache.nbytes == 64 * MiB
    assert "empty_cache() would return 64.0 MiB" in cache.advice


def test_pool_that_existed_at_baseline_is_not_blamed(tree_manager: object) -> None:
    fake = FakeBackend(["cuda:0"])
    _graph_kept(fake)
    with _tracker(fake) as tracker:
        keep = tree_manager
    del keep
    result = tracker.result
    assert result is not None and not result.leaked, result.findings


def test_owner_frozen_by_gc_freeze_still_keeps_its_pool(
    tree_manager: object, leak_module: types.ModuleType
) -> None:
    """gc.freeze() hides the owner from gc.get_objects(); the owner search reads the
    whole heap (a forked walk), so the pool is still a leak, not returnable cache."""
    fake = FakeBackend(["cuda:0"])
    frozen_before = gc.get_freeze_count()
    with _tracker(fake) as tracker:
        leak_module.ENGINE = {"graphs": tree_manager}
        gc.freeze()
        try:
            assert tree_manager not in gc.get_objects()
            assert live_pools() == {POOL: ["CUDAGraphTreeManager"]}
            _graph_kept(fake)
            result = tracker.check()
        finally:
            gc.unfreeze()
    assert gc.get_freeze_count() <= frozen_before
    assert result.leaked
    first = result.findings[0]
    assert first.kind is FindingKind.PRIVATE_POOL, result.findings
    assert "(0, 7) of CUDAGraphTreeManager" in first.message
    assert not [f for f in result.findings if f.kind is FindingKind.ALLOCATOR_CACHE]

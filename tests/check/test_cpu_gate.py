"""The CPU gate: host counters decide whether the census (a heap walk) must run."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator

import pytest
import torch

from memdiag.backends.registry import select
from memdiag.check.series import CheckSeries
from memdiag.check.tracker import Tracker
from memdiag.heap.census import StorageLedger
from memdiag.heap.hostmem import HostCounters, host_counters, moved
from memdiag.report.session import device_numbers
from memdiag.values.findings import FindingKind

MiB = 1024**2

needs_counters = pytest.mark.skipif(
    host_counters() is None, reason="no glibc mallinfo2 here: the census runs every time"
)

KEPT: list[torch.Tensor] = []


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    KEPT.clear()
    gc.collect()


def _in_use() -> int:
    counters = host_counters()
    assert counters is not None
    return counters.malloc_in_use


@needs_counters
@pytest.mark.parametrize("nbytes", [1000, 64 * 1024, MiB, 16 * MiB])
def test_cpu_storages_are_malloced_and_counted_to_within_a_chunk(nbytes: int) -> None:
    """Small storages come from malloc's arenas (uordblks), big ones from their own
    mmap (hblkhd): both are in the counter, and leave it when freed."""
    del KEPT[:]  # torch's own first-use caches settle on a warm-up allocation
    torch.empty(nbytes, dtype=torch.uint8)
    before = _in_use()
    tensor = torch.empty(nbytes, dtype=torch.uint8)
    grown = _in_use() - before
    del tensor
    after = _in_use() - before
    assert nbytes <= grown <= nbytes + 8 * 1024
    assert after < 8 * 1024  # torch's small bookkeeping may stay (a few hundred B)


@needs_counters
def test_memory_returned_to_the_os_does_not_move_the_counter() -> None:
    """malloc_trim gives free pages back to the OS: the resident set falls, bytes in
    use do not (a resident-set gate would see a fall there and miss a leak behind it)."""
    blocks = [torch.empty(200 * 1024, dtype=torch.uint8) for _ in range(40)]
    del blocks
    before = _in_use()
    ctypes.CDLL(None).malloc_trim(0)
    assert abs(_in_use() - before) < 4 * 1024


def test_moved_compares_each_counter_both_ways() -> None:
    base = HostCounters(malloc_in_use=100 * MiB, mapped_other=50 * MiB)
    assert moved(base, HostCounters(100 * MiB + 1000, 50 * MiB), MiB) is None
    rose = moved(base, HostCounters(102 * MiB, 50 * MiB), MiB)
    assert rose is not None and "rose by 2.0 MiB" in rose
    fell = moved(base, HostCounters(98 * MiB, 50 * MiB), MiB)
    assert fell is not None and "fell by 2.0 MiB" in fell and "offset" in fell
    # Freed malloc'd memory cannot hide a tensor in a file mapping: each counter alone.
    crossed = moved(base, HostCounters(96 * MiB, 54 * MiB), MiB)
    assert crossed is not None and "malloc" in crossed


def _tracker(ledger: StorageLedger) -> Tracker:
    return Tracker(device="cpu", settle=0.0, ledger=ledger, analyze=False, watch_processes=False)


@needs_counters
def test_a_passing_check_reads_counters_only() -> None:
    ledger = StorageLedger()
    ledger.refresh()
    tracker = _tracker(ledger).start()
    scratch = torch.empty(4 * MiB, dtype=torch.uint8)
    del scratch
    result = tracker.check()
    tracker.close()
    assert not result.leaked and result.cheap
    final = result.devices[0].final
    assert final.allocated is None and "skipped" in final.extra["census"]
    assert tracker.gate_reason is None
    # The session report still gets its numbers: nothing sized above the baseline.
    (numbers,) = device_numbers(result)
    assert (numbers.device, numbers.peak, numbers.end, numbers.leaked) == ("cpu", 0, 0, 0)


@needs_counters
def test_a_leak_trips_the_gate_and_the_census_names_it() -> None:
    ledger = StorageLedger()
    ledger.refresh()
    tracker = _tracker(ledger).start()
    KEPT.append(torch.empty(4 * MiB, dtype=torch.uint8))
    result = tracker.check()
    tracker.close()
    assert result.leaked
    assert tracker.gate_reason is not None and "rose by" in tracker.gate_reason
    (leak,) = result.leaks
    assert leak.kind is FindingKind.LIVE_TENSORS and leak.nbytes == 4 * MiB
    assert result.devices[0].growth == 4 * MiB


@needs_counters
def test_a_baseline_storage_freed_and_one_of_equal_size_kept_trips_the_gate() -> None:
    """Net bytes do not move, so the counters alone would pass: the ledger notices
    that a storage alive at baseline died and the census runs."""
    old = torch.empty(8 * MiB, dtype=torch.uint8)
    ledger = StorageLedger()
    ledger.refresh()
    tracker = _tracker(ledger).start()
    del old
    KEPT.append(torch.empty(8 * MiB, dtype=torch.uint8))
    tracker.check()
    tracker.close()
    assert tracker.gate_reason is not None and "were freed" in tracker.gate_reason


@needs_counters
def test_storages_made_since_a_shared_ledger_refresh_are_not_blamed() -> None:
    """Tensors kept by earlier checks of a series (within tolerance each) are caught
    up by a ledger refresh once the host counters drifted, so the next leak is sized
    alone."""
    series = CheckSeries(select("cpu"))
    for index in range(3):  # each keeps 0.75 MiB: under the 1 MiB tolerance
        tracker = series.start(tolerance=None, settle=0.0, name=f"t{index}")
        KEPT.append(torch.empty(3 * MiB // 4, dtype=torch.uint8))
        assert not series.check(tracker).leaked
        tracker.close()
    tracker = series.start(tolerance=None, settle=0.0, name="leak")
    KEPT.append(torch.empty(2 * MiB, dtype=torch.uint8))
    result = series.check(tracker)
    tracker.close()
    assert result.leaked and result.devices[0].growth == 2 * MiB


def test_one_shot_trackers_keep_the_exact_census() -> None:
    with Tracker(device="cpu", settle=0.0, analyze=False) as tracker:
        pass
    assert tracker.result is not None
    assert tracker.result.devices[0].final.allocated is not None

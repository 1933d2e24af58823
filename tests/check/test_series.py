"""The library side of per-test checks: exclusions, the shared ledger, peak budgets."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch

from memdiag.backends.fake import FakeBackend
from memdiag.backends.registry import Selection, select
from memdiag.check.exclusion import Exclusion
from memdiag.check.peaks import peak_violations
from memdiag.check.series import CheckSeries
from memdiag.check.tracker import Tracker
from memdiag.heap.census import StorageLedger
from memdiag.values.units import Tolerance

KEEP: list[torch.Tensor] = []
MiB = 1024**2


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    KEEP.clear()
    gc.collect()


class CountingLedger(StorageLedger):
    refreshes = 0

    def refresh(self) -> int:
        type(self).refreshes += 1
        return super().refresh()


def test_an_exclusion_moves_fake_device_growth_into_the_baseline() -> None:
    fake = FakeBackend(["cuda:0"])
    tracker = Tracker(device=Selection((fake,), fake.devices()), settle=0, analyze=False).start()
    with Exclusion(tracker):
        fake.allocate("cuda:0", 64 * MiB)  # a wider fixture's memory
    assert tracker.baseline["cuda:0"].allocated == 64 * MiB
    fake.allocate("cuda:0", 8 * MiB)  # the test's own
    result = tracker.check()
    tracker.close()
    assert result.leaked
    assert sum(f.nbytes for f in result.leaks) == 8 * MiB


def test_an_exclusion_hands_real_cpu_tensors_to_the_ledger() -> None:
    series = CheckSeries(select("cpu"))
    tracker = series.start(tolerance={"*": Tolerance(bytes=MiB)}, settle=0, name="t")
    with Exclusion(tracker):
        KEEP.append(torch.zeros(4 * MiB // 4))  # alive past the check, but not the test's
    assert series.check(tracker).leaked is False
    tracker.close()
    tracker = series.start(tolerance={"*": Tolerance(bytes=MiB)}, settle=0, name="t2")
    KEEP.append(torch.zeros(4 * MiB // 4))  # the test's own leak
    result = series.check(tracker)
    tracker.close()
    assert result.leaked
    assert sum(f.nbytes for f in result.leaks) == 4 * MiB


def test_the_ledger_is_walked_only_when_it_may_be_wrong() -> None:
    series = CheckSeries(select("cpu"))
    series.ledger = CountingLedger()
    CountingLedger.refreshes = 0
    tolerance = {"*": Tolerance(bytes=MiB)}

    def one(leak: bool) -> bool:
        tracker = series.start(tolerance=tolerance, settle=0, name="t")
        x = torch.zeros(MiB)
        if leak:
            KEEP.append(x)
        del x
        leaked = series.check(tracker).leaked
        tracker.close()
        return leaked

    assert [one(False) for _ in range(5)] == [False] * 5
    assert CountingLedger.refreshes == 1  # the first baseline only
    assert one(True) is True
    assert one(False) is False
    assert CountingLedger.refreshes == 2  # after the leak
    series.mark_stale()  # e.g. a wider fixture was set up
    one(False)
    assert CountingLedger.refreshes == 3


def test_peak_budget_names_the_phase_over_it() -> None:
    fake = FakeBackend(["cuda:0"])
    tracker = Tracker(device=Selection((fake,), fake.devices()), settle=0, analyze=False).start()
    with tracker.phase("resize"):
        fake.allocate("cuda:0", 48 * MiB)
        fake.set("cuda:0", allocated=0)
    with tracker.phase("infer"):
        fake.allocate("cuda:0", 8 * MiB)
        fake.set("cuda:0", allocated=0)
    (violation,) = peak_violations(tracker.phases, tracker.baseline, 32 * MiB)
    tracker.close()
    assert violation.describe() == (
        "cuda:0: peak in phase 'resize' was 48.0 MiB over baseline, above the max_peak "
        "budget of 32.0 MiB"
    )


def test_a_baseline_takes_the_last_passing_check_where_no_counter_moved() -> None:
    fake = FakeBackend(["cuda:0"])
    series = CheckSeries(Selection((fake,), fake.devices()))
    tolerance = {"*": Tolerance(bytes=MiB)}

    def one(*, leak: int = 0, between: int = 0) -> tuple[bool, int]:
        fake.allocate("cuda:0", between)  # what runs between two checks
        reads = fake.reads
        tracker = series.start(tolerance=tolerance, settle=0, name="t")
        baseline_reads = fake.reads - reads
        fake.allocate("cuda:0", leak)
        leaked = series.check(tracker).leaked
        tracker.close()
        return leaked, baseline_reads

    assert one() == (False, 1)  # the first baseline reads the device
    assert one() == (False, 0)  # nothing moved: the last check's reading is the baseline
    assert one(leak=8 * MiB) == (True, 0)  # a leak is still a leak
    assert one() == (False, 1)  # after a leak the baseline is read again
    assert one() == (False, 0)
    assert one(between=MiB // 4) == (False, 1)  # something moved in between: read again
    assert one() == (False, 0)
    series.mark_stale()  # e.g. a wider fixture was set up
    assert one() == (False, 1)


def test_a_reused_baseline_is_a_true_baseline_for_the_next_leak() -> None:
    fake = FakeBackend(["cuda:0"])
    series = CheckSeries(Selection((fake,), fake.devices()))
    tolerance = {"*": Tolerance(bytes=MiB)}
    for nbytes in (0, 0, 4 * MiB):
        tracker = series.start(tolerance=tolerance, settle=0, name="t")
        fake.allocate("cuda:0", nbytes)
        result = series.check(tracker)
        tracker.close()
    assert result.leaked
    (check,) = result.devices
    assert check.final.allocated - check.baseline.allocated == 4 * MiB
    assert sum(f.nbytes for f in result.leaks) == 4 * MiB


def _fake_test(series: CheckSeries, fake: FakeBackend, name: str, body: object = None) -> object:
    tracker = series.start(tolerance={"*": Tolerance(bytes=MiB)}, settle=0, name=name)
    if callable(body):
        body()
    result = series.check(tracker)
    tracker.close()
    return result


def test_a_check_whose_counters_equal_the_last_clean_checks_reads_nothing_else() -> None:
    """The fast lane: the baseline was the last clean check's readings and nothing
    moved, so that verdict stands; the test's own peak is still reported."""
    fake = FakeBackend(["cuda:0"])
    series = CheckSeries(Selection((fake,), fake.devices()))

    def allocate_and_free() -> None:
        fake.set("cuda:0", allocated=8 * MiB)
        fake.set("cuda:0", allocated=0)

    first = _fake_test(series, fake, "first", allocate_and_free)
    reads = fake.reads
    second = _fake_test(series, fake, "second", allocate_and_free)
    assert fake.reads == reads  # the baseline and the check: counters only
    for result in (first, second):
        assert not result.leaked and result.cheap and not result.findings  # type: ignore[attr-defined]
    (check,) = second.devices  # type: ignore[attr-defined]
    assert check.final.peak_allocated == 8 * MiB
    assert check.allowance == MiB

    # a leak after a fast-lane baseline takes the full path
    leaked = _fake_test(series, fake, "leaks", lambda: fake.allocate("cuda:0", 4 * MiB))
    assert leaked.leaked  # type: ignore[attr-defined]
    assert sum(f.nbytes for f in leaked.leaks) == 4 * MiB  # type: ignore[attr-defined]


def test_what_no_counter_shows_still_sends_the_check_the_full_way() -> None:
    fake = FakeBackend(["cuda:0"])
    series = CheckSeries(Selection((fake,), fake.devices()))
    assert not _fake_test(series, fake, "warm-up").leaked  # type: ignore[attr-defined]
    assert not _fake_test(series, fake, "clean").leaked  # type: ignore[attr-defined]
    cycle: list[object] = []
    cycle.append(cycle)
    try:
        frozen = _fake_test(series, fake, "freezes", gc.freeze)
    finally:
        gc.unfreeze()
    assert not frozen.cheap  # type: ignore[attr-defined]
    assert not _fake_test(series, fake, "clean again").leaked  # type: ignore[attr-defined]

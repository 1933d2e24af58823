"""Settle tells decay from stall: lazy release is waited out, a leak is not waited for."""

from __future__ import annotations

import pytest

from memdiag.backends.fake import FakeBackend
from memdiag.backends.registry import Selection
from memdiag.check.settle import SettleOutcome, stall_window
from memdiag.check.tracker import Tracker
from memdiag.values.result import CheckResult

MiB = 1024**2


def _check(fake: FakeBackend, script: object, **kw: object) -> tuple[CheckResult, Tracker]:
    tracker = Tracker(
        device=Selection((fake,), fake.devices()),
        analyze=False,
        watch_processes=False,
        **kw,  # type: ignore[arg-type]
    ).start()
    script(fake)  # type: ignore[operator]
    result = tracker.check()
    tracker.close()
    return result, tracker


def _outcome(tracker: Tracker) -> SettleOutcome:
    assert tracker.settle_outcome is not None
    return tracker.settle_outcome


def _leak(fake: FakeBackend) -> None:
    fake.allocate("cuda:0", 512 * MiB)


def _decay(fake: FakeBackend) -> None:
    """ROCm-style lazy release: 512 MiB come back in 8 steps, one every 0.15 s."""
    fake.allocate("cuda:0", 512 * MiB)
    for step in range(1, 9):
        fake.release_later("cuda:0", 64 * MiB, delay=0.15 * step)


def test_a_stalled_reading_ends_the_settle_early() -> None:
    result, tracker = _check(FakeBackend(["cuda:0"]), _leak, settle=30.0, stall=0.4)
    outcome = _outcome(tracker)
    assert result.leaked
    assert outcome.ended == "stalled"
    assert 0.4 <= outcome.elapsed_s < 15.0  # not the 30 s settle time
    assert result.analysis["settle"]["ended"] == "stalled"
    assert result.analysis["settle"]["elapsed_s"] == outcome.elapsed_s
    (notice,) = [n for n in result.notices if "stopped moving" in n]
    assert f"settled {outcome.elapsed_s:.2f} s of up to 30 s" in notice


def test_a_decaying_reading_is_waited_out() -> None:
    """Each step comes well inside the stall window, so the settle keeps waiting
    until memory is back (1.2 s), far past one stall window (0.4 s)."""
    result, tracker = _check(FakeBackend(["cuda:0"]), _decay, settle=30.0, stall=0.4)
    outcome = _outcome(tracker)
    assert not result.leaked
    assert outcome.ended == "back"
    assert 1.15 <= outcome.elapsed_s < 5.0
    assert result.settle_s == outcome.elapsed_s
    assert result.analysis["settle"]["ended"] == "back"


def _slow_decay(fake: FakeBackend) -> None:
    fake.allocate("cuda:0", 512 * MiB)
    for step in range(1, 41):
        fake.release_later("cuda:0", 12 * MiB, delay=0.25 * step)


def test_a_settle_that_runs_out_while_memory_still_falls_says_so() -> None:
    result, tracker = _check(FakeBackend(["cuda:0"]), _slow_decay, settle=0.5, stall=0.4)
    outcome = _outcome(tracker)
    assert result.leaked
    assert outcome.ended == "timed out"
    assert 0.5 <= outcome.elapsed_s < 10.0
    # on a loaded machine the first poll alone may outlast the 0.5 s settle time
    said = "timed out after" if outcome.polls > 1 else "ran out at the first reading"
    assert any(said in n for n in result.notices), result.notices


def test_no_settle_says_so_not_that_memory_was_still_moving() -> None:
    result, tracker = _check(FakeBackend(["cuda:0"]), _leak, settle=0)
    assert result.leaked and _outcome(tracker).polls == 1
    (notice,) = [n for n in result.notices if "settle" in n]
    assert notice.startswith("no settle (settle time 0 s): the verdict used the first reading")
    assert "still moving" not in notice and "timed out" not in notice


def test_one_reading_is_not_called_memory_still_moving() -> None:
    outcome = SettleOutcome("timed out", 3.2, 1, 0.5, 0.5)
    text = outcome.describe()
    assert "ran out at the first reading (3.20 s)" in text and "still moving" not in text


def test_the_default_stall_window_follows_the_settle_time() -> None:
    assert stall_window(0.2) == 0.2  # never longer than the settle itself
    assert stall_window(1.0) == 0.5
    assert stall_window(8.0) == 2.0
    assert stall_window(240.0) == 10.0  # vLLM's 240 s wait: a leak answers in 10 s
    assert stall_window(float("inf")) == stall_window(float("nan")) == 10.0


@pytest.mark.parametrize("settle", [8.0])
def test_the_default_window_ends_a_leak_before_the_settle_time(settle: float) -> None:
    _, tracker = _check(FakeBackend(["cuda:0"]), _leak, settle=settle)
    outcome = _outcome(tracker)
    assert outcome.ended == "stalled"
    assert outcome.elapsed_s < settle


def test_a_stall_found_at_the_end_of_the_settle_time_is_not_called_early() -> None:
    from memdiag.check.settle import SettleOutcome

    late = SettleOutcome("stalled", 1.06, 5, 1.0, 0.5).describe()
    assert late.startswith("settled 1.06 s (settle time 1 s): the readings stopped moving")
    assert "did not wait longer" not in late
    early = SettleOutcome("stalled", 0.6, 4, 30.0, 0.5).describe()
    assert "settled 0.60 s of up to 30 s" in early and "did not wait longer" in early

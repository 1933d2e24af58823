"""Tracker semantics against scripted readings (multi-device, lazy release, classes)."""

from __future__ import annotations

import os

import pytest

import memdiag
from memdiag.backends.fake import FakeBackend
from memdiag.backends.registry import Selection
from memdiag.check.tracker import Tracker
from memdiag.values.findings import FindingKind
from memdiag.values.readings import ProcessUsage
from memdiag.values.units import Tolerance

MiB = 1024**2


def _tracker(fake: FakeBackend, **kw: object) -> Tracker:
    selection = Selection((fake,), fake.devices())
    return Tracker(device=selection, analyze=False, **kw)  # type: ignore[arg-type]


def test_phase_is_a_no_op_without_a_tracker() -> None:
    assert memdiag.active_tracker() is None
    with memdiag.phase("infer"):
        pass
    memdiag.phase("create")


def test_clean_run_passes_on_the_cheap_path_without_settling() -> None:
    fake = FakeBackend(["cuda:0", "cuda:1"])
    with _tracker(fake) as tracker:
        memdiag.phase("create")
        fake.allocate("cuda:0", 100 * MiB)
        memdiag.phase("shutdown")
        fake.allocate("cuda:0", -100 * MiB)
    result = tracker.result
    assert result is not None and not result.leaked
    assert result.cheap
    assert fake.settles == 2  # once per device at the baseline, never at the check
    assert [p.name for p in result.phases] == ["create", "shutdown"]
    assert result.phases[0].reading("cuda:0").allocated == 100 * MiB  # type: ignore[union-attr]
    assert memdiag.active_tracker() is None


def test_every_device_is_checked() -> None:
    fake = FakeBackend(["cuda:0", "cuda:1"])
    tracker = _tracker(fake, settle=0.0).start()
    fake.allocate("cuda:1", 50 * MiB)
    result = tracker.check()
    tracker.close()
    assert result.leaked
    leaks = result.leaks
    assert [f.device for f in leaks] == ["cuda:1"]
    assert leaks[0].kind is FindingKind.NATIVE  # no Python tensor explains fake memory
    assert "50.0 MiB" in leaks[0].message


def test_lazy_release_is_waited_for_and_the_settle_time_reported() -> None:
    fake = FakeBackend(["cuda:0"])
    tracker = _tracker(fake, settle=3.0).start()
    fake.allocate("cuda:0", 512 * MiB)
    fake.release_later("cuda:0", 512 * MiB, delay=0.3)
    result = tracker.check()
    tracker.close()
    assert not result.leaked
    assert not result.cheap
    assert result.settle_s is not None and 0.25 <= result.settle_s < 3.0
    assert fake.settles == 2  # at the baseline and once at the check


def test_memory_released_after_the_settle_time_is_a_leak() -> None:
    fake = FakeBackend(["cuda:0"])
    tracker = _tracker(fake, settle=0.1).start()
    fake.allocate("cuda:0", 512 * MiB)
    fake.release_later("cuda:0", 512 * MiB, delay=5)
    result = tracker.check()
    tracker.close()
    assert result.leaked
    assert result.settle_s is None


def test_tolerance_per_device_and_percent() -> None:
    fake = FakeBackend(["cuda:0", "cuda:1"])
    tolerance = {"cuda:1": Tolerance(bytes=0, percent=1.0), "*": Tolerance(bytes=4 * MiB)}
    tracker = _tracker(fake, settle=0.0, tolerance=tolerance).start()
    fake.allocate("cuda:0", 3 * MiB)  # under 4 MiB
    fake.allocate("cuda:1", 700 * MiB)  # under 1% of 80 GiB
    result = tracker.check()
    tracker.close()
    assert not result.leaked
    assert {d.device: d.allowance for d in result.devices} == {
        "cuda:0": 4 * MiB,
        "cuda:1": int(80 * 1024**3 / 100),
    }


def test_allocator_cache_is_reported_never_a_leak() -> None:
    fake = FakeBackend(["cuda:0"])
    tracker = _tracker(fake, settle=0.0).start()
    fake.set("cuda:0", reserved=2048 * MiB)  # a resize without empty_cache()
    result = tracker.check()
    tracker.close()
    assert not result.leaked
    cache = [f for f in result.findings if f.kind is FindingKind.ALLOCATOR_CACHE]
    assert len(cache) == 1 and not cache[0].is_leak
    assert "empty_cache() would return 2.0 GiB" in cache[0].advice


def test_memory_outside_pytorch_beyond_tolerance_is_a_leak() -> None:
    fake = FakeBackend(["cuda:0"])
    fake.set("cuda:0", process_used=600 * MiB, reserved=100 * MiB, allocated=100 * MiB)
    tracker = _tracker(fake, settle=0.0).start()
    fake.set("cuda:0", process_used=600 * MiB + 300 * MiB)  # e.g. an NCCL communicator
    result = tracker.check()
    tracker.close()
    assert result.leaked
    (leak,) = result.leaks
    assert leak.kind is FindingKind.OUTSIDE_TORCH
    assert leak.nbytes == 300 * MiB


def test_a_child_process_holding_memory_is_a_leak_named_by_pid() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        fake = FakeBackend(["cuda:0"])
        tracker = _tracker(fake, settle=0.0).start()
        fake.set(
            "cuda:0",
            processes=(
                ProcessUsage(os.getpid(), 500 * MiB, "pytest"),
                ProcessUsage(child.pid, 1024 * MiB, "worker"),
                ProcessUsage(1, 4096 * MiB, "someone else"),
            ),
        )
        result = tracker.check()
        tracker.close()
    finally:
        child.kill()
        child.wait()
    assert result.leaked
    (leak,) = result.leaks
    assert leak.kind is FindingKind.OTHER_PROCESS
    assert leak.nbytes == 1024 * MiB
    assert [p.pid for p in leak.processes] == [child.pid]


def test_settle_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="settle"):
        Tracker(settle=-1)


def test_result_round_trips_through_json() -> None:
    from memdiag.values.result import CheckResult

    fake = FakeBackend(["cuda:0"])
    tracker = _tracker(fake, settle=0.0).start()
    memdiag.phase("create")
    fake.allocate("cuda:0", 64 * MiB)
    result = tracker.check()
    tracker.close()
    again = CheckResult.from_json(result.to_json())
    assert again.to_json() == result.to_json()
    assert again.summary() == result.summary()

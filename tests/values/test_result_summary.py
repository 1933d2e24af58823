"""A clean verdict says what is true: within tolerance, with the numbers (memory may
have grown by less than the tolerance: "memory came back" would not be true)."""

from __future__ import annotations

from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult, DeviceCheck

MiB = 1024**2


def _result(
    baseline: DeviceReading, final: DeviceReading, *, cheap: bool, settle_s: float | None
) -> CheckResult:
    device = DeviceCheck(
        device=final.device,
        baseline=baseline,
        final=final,
        allowance=MiB,
        driver_allowance=16 * MiB,
    )
    return CheckResult(
        leaked=False,
        devices=(device,),
        phases=(),
        findings=(),
        cheap=cheap,
        settle_s=settle_s,
        elapsed_s=0.0,
    )


def test_growth_within_the_tolerance_is_said_with_its_numbers() -> None:
    result = _result(
        DeviceReading("cpu", allocated=0),
        DeviceReading("cpu", allocated=4000),
        cheap=True,
        settle_s=0.0,
    )
    assert result.summary() == (
        "memory within tolerance: cpu +3.9 KiB allocated since baseline (tolerance 1.0 MiB)"
    )
    assert "came back" not in result.summary()


def test_a_settle_says_how_long_memory_took_to_come_back_within_tolerance() -> None:
    result = _result(
        DeviceReading("cuda:0", allocated=2 * MiB),
        DeviceReading("cuda:0", allocated=2 * MiB),
        cheap=False,
        settle_s=1.25,
    )
    assert result.summary() == (
        "memory back within tolerance after settling 1.25 s: cuda:0 0 B allocated "
        "since baseline (tolerance 1.0 MiB)"
    )


def test_a_driver_only_device_is_stated_in_driver_numbers() -> None:
    result = _result(
        DeviceReading("gpu:0", process_used=100 * MiB),
        DeviceReading("gpu:0", process_used=96 * MiB),
        cheap=True,
        settle_s=0.0,
    )
    assert result.summary() == (
        "memory within tolerance: gpu:0 -4.0 MiB used by this process since baseline "
        "(tolerance 16.0 MiB)"
    )


def test_a_report_edited_to_leaked_without_a_finding_still_has_a_summary() -> None:
    result = _result(
        DeviceReading("cpu", allocated=0),
        DeviceReading("cpu", allocated=0),
        cheap=True,
        settle_s=0.0,
    )
    edited = CheckResult.from_json({**result.to_json(), "leaked": True})
    assert edited.summary() == "leaked, but the report lists no leak finding"


def test_a_cpu_reading_the_host_counters_let_through_says_so() -> None:
    gated = DeviceReading("cpu", allocated=None, extra={"gated": True})
    result = _result(DeviceReading("cpu", allocated=0), gated, cheap=True, settle_s=0.0)
    assert result.summary() == (
        "memory within tolerance: cpu (host memory counters within the tolerance, 1.0 MiB, "
        "since baseline: no heap walk needed)"
    )

"""Readings of one device from two sources merge field by field."""

from __future__ import annotations

import dataclasses

from memdiag.values.readings import DeviceReading, ProcessUsage


def test_merged_fills_only_what_the_first_source_cannot_tell() -> None:
    torch = DeviceReading(
        device="cuda:0",
        sources=("torch",),
        allocated=10,
        reserved=20,
        active=10,
        time=5.0,
        extra={"initialized": True, "shared": "torch"},
    )
    nvml = DeviceReading(
        device="cuda:0",
        sources=("nvml", "torch"),
        allocated=99,
        driver_used=500,
        total=1000,
        process_used=300,
        processes=(ProcessUsage(pid=1, used=300, name="python"),),
        time=7.0,
        extra={"uuid": "GPU-1", "shared": "nvml"},
    )
    merged = torch.merged(nvml)
    assert merged == DeviceReading(
        device="cuda:0",
        sources=("torch", "nvml"),
        allocated=10,
        reserved=20,
        active=10,
        driver_used=500,
        total=1000,
        process_used=300,
        processes=nvml.processes,
        time=7.0,
        extra={"uuid": "GPU-1", "shared": "torch", "initialized": True},
    )
    # every field is accounted for: one added to DeviceReading is merged too
    assert {f.name for f in dataclasses.fields(DeviceReading)} >= set(merged.__dict__)
    assert nvml.merged(torch).allocated == 99


def test_with_values_is_replace_without_its_cost() -> None:
    reading = DeviceReading(device="cuda:0", allocated=1, peak_allocated=3, extra={"a": 1})
    copy = reading.with_values(peak_allocated=7, time=2.0)
    assert copy == dataclasses.replace(reading, peak_allocated=7, time=2.0)
    assert reading.peak_allocated == 3 and copy is not reading

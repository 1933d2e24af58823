"""Every byte the driver charges this process lands in a named bucket (or is said not
to): bucket arithmetic, the 95% rule, the calibration cache, holders found on the
heap, and the outside-PyTorch verdict.  Scripted driver readings (a fake backend),
real holder objects (a cuMem allocator with vLLM's layout, a gloo process group)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memdiag.backends import calibrate as calibration
from memdiag.backends import outside
from memdiag.backends.calibrate import Calibration, calibrate, calibration_key
from memdiag.backends.fake import FakeBackend
from memdiag.backends.outside import Holder, note_nccl, outside_holders, process_groups
from memdiag.backends.registry import Selection
from memdiag.check.accounting import account, framework_growth
from memdiag.check.tracker import Tracker
from memdiag.report.json_report import JsonReport, schema
from memdiag.values.findings import FindingKind
from memdiag.values.readings import DeviceReading

MiB = 1024**2
UUID = "GPU-00000000-fake-0000-0000-000000000000"
H200 = Calibration(context=610 * MiB, blas=66 * MiB, dnn=8 * MiB, nccl=None)
H200_NCCL = Calibration(
    context=610 * MiB, blas=66 * MiB, dnn=8 * MiB, nccl=558 * MiB, nccl_kept=170 * MiB
)


def _reading(own: int, reserved: int, allocated: int = 0, **extra: Any) -> DeviceReading:
    return DeviceReading(
        device="cuda:0",
        sources=("torch", "nvml"),
        allocated=allocated,
        reserved=reserved,
        process_used=own,
        extra={"own_used": own, **extra},
    )


# -- bucket arithmetic ------------------------------------------------------------------


def test_named_buckets_explain_95_percent_of_the_driver_figure() -> None:
    holders = [
        Holder("blas", "cuBLAS/cuBLASLt handles and kernels", 66 * MiB, False),
        Holder("context", "CUDA context", 610 * MiB, True),
        Holder("library", "CuPy memory pool", 60 * MiB, True),
    ]
    acc = account(_reading(750 * MiB, reserved=2 * MiB), holders)
    assert acc is not None
    assert [(b.name, b.nbytes // MiB, b.measured) for b in acc.buckets] == [
        ("torch: allocator cache (reserved, not allocated)", 2, True),
        ("CUDA context", 610, True),
        ("CuPy memory pool", 60, True),
        ("cuBLAS/cuBLASLt handles and kernels", 66, False),
    ]
    assert acc.unnamed == 12 * MiB
    assert acc.fraction >= 0.95
    assert acc.describe().endswith("not named 12.0 MiB (98.4% named)")
    assert acc.describe_outside() == (
        "CUDA context 610.0 MiB (measured), CuPy memory pool 60.0 MiB (measured), "
        "cuBLAS/cuBLASLt handles and kernels 66.0 MiB (estimated), not named 12.0 MiB"
    )
    data = acc.to_json()
    assert data["bytes"] == 750 * MiB and data["unnamed"] == 12 * MiB
    assert json.loads(json.dumps(data)) == data


def test_short_of_95_percent_is_shown_not_hidden() -> None:
    acc = account(
        _reading(750 * MiB, reserved=2 * MiB), [Holder("context", "ctx", 610 * MiB, True)]
    )
    assert acc is not None
    assert acc.fraction < 0.95
    assert acc.unnamed == 138 * MiB
    assert "(81.6% named)" in acc.describe()


def test_an_estimate_takes_only_what_measured_buckets_leave() -> None:
    holders = [
        Holder("blas", "cuBLAS", 66 * MiB, False, "size measured once"),
        Holder("context", "CUDA context", 610 * MiB, True),
    ]
    acc = account(_reading(650 * MiB, reserved=0), holders)
    assert acc is not None
    blas = acc.of_kind("blas")[0]
    assert blas.nbytes == 40 * MiB
    assert "66.0 MiB expected, only this is left" in blas.detail
    assert acc.unnamed == 0


def test_memory_a_sleeping_cumem_pool_released_is_not_counted_as_torch() -> None:
    holders = [
        Holder("context", "CUDA context", 610 * MiB, True),
        Holder("unbacked", "released", 1024 * MiB, True),
    ]
    acc = account(_reading(900 * MiB, reserved=1280 * MiB, allocated=1280 * MiB), holders)
    assert acc is not None
    (torch_bucket,) = acc.of_kind("torch")
    assert torch_bucket.nbytes == 256 * MiB
    assert acc.of_kind("context")[0].nbytes == 610 * MiB
    assert acc.unnamed == 34 * MiB


def test_no_per_process_figure_no_accounting() -> None:
    reading = DeviceReading(device="cuda:0", allocated=0, reserved=0)
    assert account(reading, []) is None


def test_framework_growth_counts_only_what_was_not_there_at_baseline() -> None:
    holders = [
        Holder("context", "CUDA context", 610 * MiB, True),
        Holder("blas", "cuBLAS", 66 * MiB, False),
    ]
    acc = account(_reading(976 * MiB, reserved=0), holders)
    assert acc is not None
    # Context existed at baseline (610 MiB outside then): cuBLAS is the framework's growth.
    assert framework_growth(acc, 366 * MiB, before=610 * MiB) == 66 * MiB
    # Both existed at baseline: none of the growth is the framework's.
    assert framework_growth(acc, 300 * MiB, before=676 * MiB) == 0


# -- calibration --------------------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MEMDIAG_CACHE_DIR", str(tmp_path))
    calibration.clear_cache()
    yield tmp_path
    calibration.clear_cache()


def test_calibration_runs_once_per_device_and_is_kept_on_disk(cache_dir: Path) -> None:
    calls: list[tuple[int, bool]] = []

    def runner(index: int, nccl: bool) -> dict[str, Any]:
        calls.append((index, nccl))
        return {**H200.to_json(), "nccl": 40 * MiB if nccl else None}

    assert calibrate(0, UUID, runner=runner) == H200
    assert calibrate(0, UUID, runner=runner) == H200
    assert calls == [(0, False)]
    calibration.clear_cache()  # a new process: read from disk, no child
    assert calibrate(0, UUID, runner=runner) == H200
    assert calls == [(0, False)]
    stored = json.loads((cache_dir / "calibration.json").read_text())
    assert stored[calibration_key(UUID, nccl=False)]["context"] == 610 * MiB
    with_nccl = calibrate(0, UUID, nccl=True, runner=runner)
    assert with_nccl is not None and with_nccl.nccl == 40 * MiB
    assert calls == [(0, False), (0, True)]
    # A measurement with NCCL serves a later one without it: no third child.
    calibration.clear_cache()
    assert calibrate(1, "GPU-second", nccl=True, runner=runner) is not None
    assert calibrate(1, "GPU-second", runner=runner) is not None
    assert calls == [(0, False), (0, True), (1, True)]


def test_a_failed_calibration_is_unknown_not_zero(cache_dir: Path) -> None:
    assert calibrate(1, UUID, runner=lambda index, nccl: None) is None
    assert calibrate(1, UUID, runner=lambda index, nccl: {"context": "x"}) is None
    assert not (cache_dir / "calibration.json").exists()


def test_calibration_can_be_turned_off(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMDIAG_CALIBRATE", "0")
    assert calibrate(0, "GPU-other") is None  # no child started (it would need a GPU)


# -- holders -------------------------------------------------------------------------------


@dataclasses.dataclass
class AllocationData:
    handle: tuple[int, int, int, int]
    tag: str


class CuMemAllocator:
    """The layout of vLLM's sleep-mode allocator (``vllm.device_allocator.cumem``)."""

    def __init__(self) -> None:
        self.pointer_to_data: dict[int, AllocationData] = {}
        self.allocator_and_pools: dict[str, Any] = {}

    def malloc(self, device: int, size: int) -> None:
        ptr = 0x7F0000000000 + len(self.pointer_to_data) * size
        self.pointer_to_data[ptr] = AllocationData((device, size, ptr, 1), "weights")


def test_holders_name_calibrated_sizes_and_a_cumem_allocator_on_the_heap() -> None:
    allocator = CuMemAllocator()
    allocator.malloc(0, 256 * MiB)
    allocator.malloc(0, 256 * MiB)
    allocator.malloc(1, 64 * MiB)  # another device: not cuda:0's
    reading = _reading(1200 * MiB, reserved=0, uuid=UUID)
    asked: list[tuple[int, str, bool]] = []

    def fake_calibrate(index: int, uuid: str, *, nccl: bool = False) -> Calibration:
        asked.append((index, uuid, nccl))
        return H200

    holders = outside_holders("cuda:0", reading, calibrate_fn=fake_calibrate)
    assert asked == [(0, UUID, False)]
    by_kind = {h.kind: h for h in holders}
    assert by_kind["context"].nbytes == 610 * MiB and by_kind["context"].measured
    assert by_kind["blas"].nbytes == 66 * MiB and not by_kind["blas"].measured
    assert by_kind["cumem"].nbytes == 512 * MiB and by_kind["cumem"].measured
    assert outside_holders("cpu", reading, calibrate_fn=fake_calibrate) == []
    # Not read by NVML (ROCm's amdsmi): the NVML calibration child is not asked.
    rocm = dataclasses.replace(reading, sources=("torch", "amdsmi"))
    assert not [h for h in outside_holders("cuda:0", rocm, calibrate_fn=fake_calibrate)
                if h.kind == "context"]  # fmt: skip
    assert asked == [(0, UUID, False)]
    del allocator


def test_the_heap_is_walked_only_when_cheap_holders_leave_memory_unexplained() -> None:
    allocator = CuMemAllocator()
    allocator.malloc(0, 64 * MiB)

    def fake_calibrate(index: int, uuid: str, *, nccl: bool = False) -> Calibration:
        return H200

    explained = _reading((610 + 66) * MiB, reserved=0, uuid=UUID)  # context + cuBLAS
    kinds = [h.kind for h in outside_holders("cuda:0", explained, calibrate_fn=fake_calibrate)]
    assert "cumem" not in kinds  # no walk: nothing left to explain
    more = _reading((610 + 66 + 64) * MiB, reserved=0, uuid=UUID)
    kinds = [h.kind for h in outside_holders("cuda:0", more, calibrate_fn=fake_calibrate)]
    assert "cumem" in kinds
    del allocator


def test_live_process_groups_are_named_with_rank_and_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    # init_process_group() installs a rank-prefixing sys.excepthook for good: undone.
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        sub = dist.new_group([0], backend="gloo")
        groups = process_groups(0, backends=("gloo",))
        assert len(groups) == 2
        assert {(rank, size) for _, rank, size in groups} == {(0, 1)}
        assert process_groups(0) == []  # no NCCL group among them
        dist.destroy_process_group(sub)
    finally:
        dist.destroy_process_group()
    assert process_groups(0, backends=("gloo",)) == []


class FakeNcclGroup:
    """What the accounting asks of a process group: rank, size, bound device."""

    bound_device_id = None

    def rank(self) -> int:
        return 1

    def size(self) -> int:
        return 2


def test_nccl_groups_are_named_and_what_nccl_keeps_after_destroy_is_framework(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c10d = pytest.importorskip("torch.distributed.distributed_c10d")
    monkeypatch.setattr(outside, "_NCCL_SEEN", set())
    reading = _reading(1400 * MiB, reserved=0, uuid=UUID)
    asked: list[bool] = []

    def fake_calibrate(index: int, uuid: str, *, nccl: bool = False) -> Calibration:
        asked.append(nccl)
        return H200_NCCL if nccl else H200

    group = FakeNcclGroup()
    assert not [h for h in outside_holders("cuda:0", reading, calibrate_fn=fake_calibrate)
                if h.kind.startswith("nccl")]  # fmt: skip
    with monkeypatch.context() as live:
        live.setitem(c10d._world.pg_map, group, ("nccl", None))
        live.setitem(c10d._world.pg_names, group, "tp")
        note_nccl()  # a reading while the group lives
        (comm,) = [h for h in outside_holders("cuda:0", reading, calibrate_fn=fake_calibrate)
                   if h.kind == "nccl"]  # fmt: skip
    assert comm.name == "NCCL communicator of process group 'tp' (rank 1 of 2)"
    assert comm.nbytes == 558 * MiB and not comm.measured
    holders = outside_holders(
        "cuda:0", _reading(846 * MiB, 0, uuid=UUID), calibrate_fn=fake_calibrate
    )
    (kept,) = [h for h in holders if h.kind.startswith("nccl")]
    assert kept.kind == "nccl_kept" and kept.nbytes == 170 * MiB
    assert asked == [False, True, True]
    acc = account(_reading(846 * MiB, 0, uuid=UUID), holders)
    assert acc is not None and acc.unnamed == 0
    assert framework_growth(acc, 846 * MiB, before=0) == 846 * MiB  # none of it a leak


# -- the verdict through a tracker ---------------------------------------------------------


def _seed_calibration(cache_dir: Path) -> None:
    (cache_dir / "calibration.json").write_text(
        json.dumps({calibration_key(UUID, nccl=False): H200.to_json()})
    )


def _tracker(fake: FakeBackend) -> Tracker:
    return Tracker(device=Selection((fake,), fake.devices()), settle=0.0, analyze=False)


def _device(fake: FakeBackend, own: int) -> None:
    fake.set("cuda:0", process_used=own, extra={"own_used": own, "uuid": UUID})


def test_cumem_memory_left_mapped_is_a_leak_listed_by_bucket(cache_dir: Path) -> None:
    _seed_calibration(cache_dir)
    fake = FakeBackend(["cuda:0"], stands_for=("nvml",))
    _device(fake, 610 * MiB)  # the context exists at baseline
    allocator = CuMemAllocator()
    with _tracker(fake) as tracker:
        allocator.malloc(0, 300 * MiB)
        _device(fake, (610 + 66 + 300) * MiB)  # a matmul ran, and 300 MiB stay mapped
    result = tracker.result
    assert result is not None and result.leaked
    first = result.findings[0]
    assert first.kind is FindingKind.OUTSIDE_TORCH and first.is_leak
    assert first.nbytes == 300 * MiB  # the cuBLAS handle is reported, not blamed
    assert "66.0 MiB of library handles and context, not a leak" in first.message
    assert "cuMem allocator (CuMemAllocator) 300.0 MiB (measured)" in first.message
    assert "CUDA context 610.0 MiB (measured)" in first.message
    assert "cuMem allocator" in first.advice
    accounting = result.analysis["accounting"]["cuda:0"]
    assert accounting["bytes"] == 976 * MiB
    assert accounting["fraction_named"] >= 0.95
    del allocator
    jsonschema = pytest.importorskip("jsonschema")
    report = json.loads(json.dumps(JsonReport(result).data(), default=str))
    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)
    report["analysis"]["accounting"]["cuda:0"]["fraction_named"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)


def test_cumem_memory_freed_in_shutdown_is_clean(cache_dir: Path) -> None:
    _seed_calibration(cache_dir)
    fake = FakeBackend(["cuda:0"], stands_for=("nvml",))
    _device(fake, 610 * MiB)
    allocator = CuMemAllocator()
    with _tracker(fake) as tracker:
        allocator.malloc(0, 300 * MiB)
        allocator.pointer_to_data.clear()  # shutdown frees it
        _device(fake, (610 + 66) * MiB)
    result = tracker.result
    assert result is not None and not result.leaked, result.findings
    (note,) = [f for f in result.findings if f.kind is FindingKind.OUTSIDE_TORCH]
    assert not note.is_leak
    assert "66.0 MiB of it library handles and context" in note.message
    assert "cuBLAS/cuBLASLt handles and kernels 66.0 MiB (estimated)" in note.message


def test_library_handles_do_not_push_growth_over_the_tolerance(cache_dir: Path) -> None:
    _seed_calibration(cache_dir)
    fake = FakeBackend(["cuda:0"], stands_for=("nvml",))
    _device(fake, 610 * MiB)
    with _tracker(fake) as tracker:
        _device(fake, (610 + 66 + 200) * MiB)  # 266 MiB > 256 MiB, 66 of them cuBLAS
    result = tracker.result
    assert result is not None and not result.leaked, result.findings
    (note,) = [f for f in result.findings if f.kind is FindingKind.OUTSIDE_TORCH]
    assert note.nbytes == 266 * MiB
    assert "not named 200.0 MiB" in note.message


def test_context_created_during_tracking_is_reported_at_its_measured_size(
    cache_dir: Path,
) -> None:
    _seed_calibration(cache_dir)
    fake = FakeBackend(["cuda:0"], stands_for=("nvml",))
    _device(fake, 0)
    with _tracker(fake) as tracker:
        _device(fake, (610 + 66) * MiB)
    result = tracker.result
    assert result is not None and not result.leaked, result.findings
    (context,) = [f for f in result.findings if f.kind is FindingKind.CONTEXT]
    assert context.nbytes == 610 * MiB
    assert "measured once for this device" in context.message


def test_memory_mapped_in_the_first_phase_is_not_taken_for_the_context(
    cache_dir: Path,
) -> None:
    """The context appears during tracking and 300 MiB are mapped in the same phase:
    the smallest reading since then includes them; the measured context does not."""
    _seed_calibration(cache_dir)
    fake = FakeBackend(["cuda:0"], stands_for=("nvml",))
    _device(fake, 0)
    allocator = CuMemAllocator()
    with _tracker(fake) as tracker:
        import memdiag

        memdiag.phase("create")
        allocator.malloc(0, 300 * MiB)
        _device(fake, (610 + 300) * MiB)
        memdiag.phase("shutdown")
        _device(fake, (610 + 66 + 300) * MiB)
    result = tracker.result
    assert result is not None and result.leaked, result.findings
    first = result.findings[0]
    assert first.kind is FindingKind.OUTSIDE_TORCH and first.nbytes == 300 * MiB, first
    assert "cuMem allocator (CuMemAllocator) 300.0 MiB (measured)" in first.message
    del allocator


def test_a_passing_test_in_a_series_starts_no_calibration_child(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first test of a suite creates the context; its check passes on counters and
    names no buckets, so no child measures the context (seconds on an H200).  A check
    that goes further still measures it."""
    from memdiag.check.series import CheckSeries

    children: list[int] = []

    def runner(index: int, nccl: bool) -> dict[str, Any]:
        children.append(index)
        return H200.to_json()

    monkeypatch.setattr(calibration, "_run_child", runner)
    fake = FakeBackend(["cuda:0"], stands_for=("nvml",))
    _device(fake, 0)
    series = CheckSeries(Selection((fake,), fake.devices()))
    tracker = series.start(tolerance=None, settle=0.0, name="first")
    _device(fake, (610 + 66) * MiB)
    result = series.check(tracker)
    tracker.close()
    assert result.cheap and not result.leaked
    assert children == []
    tracker = series.start(tolerance=None, settle=0.0, name="leaks outside torch")
    _device(fake, (610 + 66 + 300) * MiB)
    result = series.check(tracker)
    tracker.close()
    assert result.leaked and children == [0]

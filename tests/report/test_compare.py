"""`memdiag compare`: the PR gate, on real runs of the toy engine and on fixed numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from memdiag.cli import main
from memdiag.report.compare import compare
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult, PhaseRecord
from tests.report.runs import run_memdiag
from tests.report.sample import sample_result

MiB = 1024**2


def test_leaky_head_fails_against_a_fixed_base(toy_runs: dict[str, Path]) -> None:
    done = run_memdiag("compare", str(toy_runs["fixed"]), str(toy_runs["lru_cache"]))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].strip() == "base vs head (tolerance 1.0 MiB)"
    assert lines[3].split() == [
        "cpu", "0", "B", "10.0", "MiB", "+10.0", "MiB", "43.0", "MiB", "43.0", "MiB", "0", "B"
    ]  # fmt: skip
    assert (
        "worse: cpu: head leaks 10.0 MiB more than base (0 B -> 10.0 MiB, tolerance" in done.stdout
    )
    assert "FAIL: head is worse than base on 1 device" in done.stdout


def test_fixed_head_passes_against_a_leaky_base(
    toy_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", str(toy_runs["lru_cache"]), str(toy_runs["fixed"])]) == 0
    assert main(["compare", str(toy_runs["fixed"]), str(toy_runs["fixed"])]) == 0
    assert "OK: head is not worse than base on 1 device" in capsys.readouterr().out


def test_tolerance_absorbs_small_growth(
    toy_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compare", str(toy_runs["fixed"]), str(toy_runs["lru_cache"])]
    assert main([*args, "--tolerance", "16MiB"]) == 0
    assert main([*args, "--tolerance", "10MiB"]) == 0
    assert main([*args, "--tolerance", "9MiB"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json", "{fixed}"], "report not found: missing.json"),
        (["{fixed}", "{future}"], "schema_version 2 is not supported"),
        (["{fixed}", "{fixed}", "--tolerance", "lots"], "--tolerance: 'lots' is not a size"),
    ],
)
def test_usage_errors_exit_2(
    toy_runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    future = tmp_path / "future.json"
    data = json.loads(toy_runs["fixed"].read_text())
    future.write_text(json.dumps({**data, "schema_version": 2}))
    paths = {"fixed": str(toy_runs["fixed"]), "future": str(future)}
    assert main(["compare", *(a.format(**paths) for a in args)]) == 2
    assert message in capsys.readouterr().err


def _with_peak(result: CheckResult, device: str, peak: int) -> CheckResult:
    record = result.phases[1]
    readings = tuple(
        dataclasses.replace(r, peak_allocated=peak) if r.device == device else r
        for r in record.readings
    )
    phases = (result.phases[0], dataclasses.replace(record, readings=readings), *result.phases[2:])
    return dataclasses.replace(result, phases=phases)


def test_a_higher_peak_fails_even_without_a_leak() -> None:
    base = sample_result()
    head = _with_peak(base, "cuda:1", 2 * 1024 * MiB)
    comparison = compare(base, head, tolerance=MiB)
    assert comparison.worse
    assert comparison.reasons() == [
        "cuda:1: head peaks 512.0 MiB higher than base (1.5 GiB -> 2.0 GiB, tolerance 1.0 MiB)"
    ]
    assert not compare(head, base, tolerance=MiB).worse
    assert not compare(base, head, tolerance=512 * MiB).worse


def test_devices_only_in_one_run_are_shown_not_failed() -> None:
    base = sample_result()
    head = dataclasses.replace(
        base,
        devices=base.devices[:1],
        phases=tuple(PhaseRecord(p.name, p.started, p.ended, p.readings[:1]) for p in base.phases),
    )
    comparison = compare(base, head, tolerance=MiB)
    assert [d.device for d in comparison.devices] == ["cuda:0", "cuda:1"]
    assert comparison.devices[1].head_peak is None and not comparison.worse
    assert comparison.notes == ("cuda:1 is only in the base run",)


def test_peak_falls_back_to_phase_end_readings_on_cpu() -> None:
    reading = DeviceReading(device="cpu", allocated=5 * MiB)
    base = sample_result()
    cpu = dataclasses.replace(
        base,
        devices=(dataclasses.replace(base.devices[0], device="cpu"),),
        phases=(PhaseRecord("infer", 0.0, 1.0, (reading,)),),
        findings=(),
    )
    row = compare(cpu, cpu, tolerance=0).devices[0]
    assert (row.base_peak, row.base_leaked) == (781 * MiB, 0)  # final check 781 MiB > 5 MiB

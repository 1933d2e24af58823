"""Wrong words: every number shown is the one it stands next to, and every root that
alone exceeds the tolerance is named.  (Holders outside the heap: tests/retainers/
test_outside_holders.py; a percentage tolerance on cpu: tests/check/test_cpu_tolerance.py.)"""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from memdiag.report.terminal import render_terminal
from memdiag.values.findings import Finding, FindingKind
from memdiag.values.holders import held_text
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult, DeviceCheck
from memdiag.values.retainers import Edge, RetainerGroup

MiB = 1024 * 1024


def _group(name: str, size: int) -> RetainerGroup:
    return RetainerGroup(
        root_kind="module",
        root_name=name,
        chain=(Edge("", "torch.Tensor", "cpu, 1.0 MiB"),),
        suspect_index=None,
        retained_bytes=size,
        tensor_count=1,
        storage_count=1,
        signature=name,
    )


def _result(groups: list[RetainerGroup], tolerance: int = MiB) -> CheckResult:
    total = sum(g.retained_bytes for g in groups)
    finding = Finding(
        kind=FindingKind.LIVE_TENSORS,
        device="cpu",
        nbytes=total,
        is_leak=True,
        message="live tensors",
        retainers=tuple(groups),
    )
    reading = DeviceReading(device="cpu", sources=("cpu",), allocated=0)
    check = DeviceCheck(
        device="cpu",
        baseline=reading,
        final=DeviceReading(device="cpu", sources=("cpu",), allocated=total),
        allowance=tolerance,
        driver_allowance=tolerance,
    )
    return CheckResult(
        leaked=True,
        devices=(check,),
        phases=(),
        findings=(finding,),
        cheap=False,
        settle_s=None,
        elapsed_s=0.0,
    )


def _text(result: CheckResult, verbosity: int = 0) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None, markup=False)
    render_terminal(result, console, verbosity=verbosity)
    return buffer.getvalue()


# -- every number is the one it stands next to -------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([24 * MiB], "held by a.X (cpu, 1.0 MiB)"),  # one group holding all: no extra number
        ([24 * MiB, 15 * MiB], "24.0 MiB held by a.X (cpu, 1.0 MiB); 15.0 MiB by 1 other"),
        ([24 * MiB, 10 * MiB, 5 * MiB], "24.0 MiB held by a.X (cpu, 1.0 MiB); 15.0 MiB by 2"),
    ],
)
def test_banner_says_each_retainers_own_bytes(sizes: list[int], expected: str) -> None:
    names = ["a.X", "b.Y", "c.Z"]
    result = _result([_group(n, s) for n, s in zip(names, sizes, strict=False)])
    banner = result.summary()
    assert expected in banner, banner
    total = sum(sizes)
    if len(sizes) > 1:  # the finding's total is never written next to one retainer
        assert f"{total / MiB:.1f} MiB held by" not in banner


def test_held_text_of_hand_edited_groups() -> None:
    broken = RetainerGroup.from_json({"retained_bytes": "lots", "root_name": "m.X"})
    assert held_text([broken], 5) == "0 B held by m.X"
    assert held_text([]) == ""


def test_banner_group_bytes_smaller_than_the_finding_are_said() -> None:
    group = _group("a.X", 24 * MiB)
    result = _result([group])
    finding = result.findings[0]
    bigger = dataclasses.replace(result, findings=(dataclasses.replace(finding, nbytes=39 * MiB),))
    assert "24.0 MiB held by a.X" in bigger.summary()


# -- every root over the tolerance is named by default ---------------------------------


def test_every_root_over_the_tolerance_is_named_at_default_verbosity() -> None:
    groups = [_group(f"m.BIG{i}", (10 - i) * MiB) for i in range(6)]
    groups += [_group(f"m.SMALL{i}", 512 * 1024) for i in range(4)]
    text = _text(_result(groups, tolerance=MiB))
    for i in range(6):
        assert f"m.BIG{i}" in text
    # the small ones (each under the tolerance) are still trimmed at -v0
    assert "m.SMALL3" not in text and "…and 4 more retainers (-v shows more)" in text
    assert "m.SMALL3" in _text(_result(groups, tolerance=MiB), verbosity=2)

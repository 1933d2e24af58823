"""Wrong words: every number shown is the one it stands next to, every root that alone
exceeds the tolerance is named, holders outside the Python heap (atexit, contextvars,
logging's registry, native code) are named with advice that frees the memory, no
empty "0 B" group, and a percentage tolerance on cpu is of the host's RAM."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from rich.console import Console

from memdiag.check.tracker import Tracker
from memdiag.report.terminal import render_terminal
from memdiag.values.findings import Finding, FindingKind
from memdiag.values.holders import held_text
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult, DeviceCheck
from memdiag.values.retainers import Edge, RetainerGroup
from memdiag.values.units import parse_tolerance

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


# -- holders outside the heap, logging, native code --------------------------------------

OUTSIDE = """\
import atexit, contextvars, logging, torch

def make():
    big = torch.ones(6 << 20)          # 24 MiB
    def flush():
        return big.sum()
    atexit.register(flush)

make()
REQUEST = contextvars.ContextVar("request")
REQUEST.set(torch.ones(5 << 20))       # 20 MiB
log = logging.getLogger("engine")
log.cache = torch.ones(4 << 20)        # 16 MiB
log = None
mylog = logging.getLogger("worker")
mylog.buffers = [torch.ones(3 << 20)]  # 12 MiB
BASE = torch.ones(2 << 20)             # 8 MiB, plus a view only atexit holds
atexit.register(print, BASE.view(-1)[:10], end="")
"""


MEMDIAG_RUN = (sys.executable, "-m", "memdiag", "run", "--device", "cpu", "--settle", "0")


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    where = tmp_path_factory.mktemp("outside")
    script = where / "outside.py"
    script.write_text(OUTSIDE)
    out = where / "r.json"
    proc = subprocess.run(
        [*MEMDIAG_RUN, "--json", str(out), "-vv", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    data = json.loads(out.read_text())
    groups = {g["root_name"]: g for f in data["findings"] for g in f["retainers"]}
    groups["__stderr__"] = {"text": proc.stderr}
    return groups


def test_atexit_callbacks_are_named_not_an_unreachable_cycle(outside: dict[str, Any]) -> None:
    group = outside["atexit callbacks"]
    assert group["root_kind"] == "registry"
    assert group["retained_bytes"] == 24 * MiB
    assert "function make.<locals>.flush" in group["chain_text"]
    assert "gc.collect() does not free" in group["note"]
    text = outside["__stderr__"]["text"]
    assert "unreachable cycle" not in text and "gc.collect() would free" not in text
    assert "atexit.unregister(flush)" in text


def test_context_variables_are_named_with_their_variable(outside: dict[str, Any]) -> None:
    (name,) = [n for n in outside if n.startswith("contextvars context")]
    group = outside[name]
    assert group["retained_bytes"] == 20 * MiB
    assert group["chain_text"].startswith(f"{name} -> ContextVar 'request'")
    assert "reset the ContextVar 'request'" in outside["__stderr__"]["text"]


def test_loggers_are_kept_by_loggings_registry(outside: dict[str, Any]) -> None:
    group = outside["logging.getLogger('engine')"]
    assert group["retained_bytes"] == 16 * MiB
    assert group["chain_text"] == "logging.getLogger('engine') -> .cache (cpu, 16.0 MiB)"
    assert not group["other_roots"]  # not every other logger of the process
    text = outside["__stderr__"]["text"]
    assert "run `del logging.getLogger('engine').cache`" in text
    assert "`log = None`" not in text
    named = outside["__main__.mylog"]
    assert named["retained_bytes"] == 12 * MiB and not named["other_roots"]
    assert "`mylog = None` frees nothing" in text and "run `del mylog.buffers`" in text
    assert "logging.Logger.manager.loggerDict" in text


def test_no_empty_zero_byte_groups(outside: dict[str, Any]) -> None:
    groups = [g for n, g in outside.items() if n != "__stderr__"]
    assert all(g["retained_bytes"] > 0 and g["storage_count"] > 0 for g in groups), groups
    lines = outside["__stderr__"]["text"].splitlines()
    assert not [line for line in lines if re.match(r"^\W*0 B ", line)], lines


# -- a percentage tolerance on cpu -------------------------------------------------------


def test_a_percentage_tolerance_on_cpu_is_of_the_host_ram() -> None:
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    tracker = Tracker(device="cpu", tolerance=parse_tolerance("0.5%"), settle=0)
    assert tracker.allowance("cpu", None) == int(ram * 0.5 / 100)
    assert tracker.allowance("cpu", None) > 0


def test_a_percentage_tolerance_without_a_ram_size_says_what_applies(tmp_path: Path) -> None:
    with mock.patch("memdiag.check.tracker.host_ram_total", return_value=None):
        tracker = Tracker(device="cpu", tolerance=parse_tolerance("2MiB,0.5%"), settle=0)
        with tracker:
            pass
    result = tracker.result
    assert result is not None
    assert any(
        "0.5% on cpu: this host's RAM size is unknown, so only 2.0 MiB applies" in n
        for n in result.notices
    ), result.notices

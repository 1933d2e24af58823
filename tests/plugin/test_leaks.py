"""Real leaks (CPU tensors in a module-level list, an lru_cache, gc-frozen garbage) found
by ``pytest --gpu-leak-check``.  Leaking runs go through ``runpytest_subprocess``: an
inline run would keep the leaked tensors (and any freeze) in this process."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(find_spec("torch") is None, reason="needs torch")

CORE = """
import functools
import pytest
import torch

KEEP = []

@functools.lru_cache
def cached_buffer(n):
    return torch.zeros(n)

def test_clean():
    x = torch.zeros(1 << 20)
    del x

def test_leak_list():
    KEEP.append(torch.zeros(1 << 20))

def test_leak_lru_cache():
    cached_buffer(1 << 19)

def test_fails_and_leaks():
    KEEP.append(torch.ones(1 << 18, dtype=torch.float64))
    assert 1 == 2, "its own failure"

def test_fails_clean():
    x = torch.ones(1 << 20)
    assert x.sum() == 0, "fails, holds x in its frame, but leaks nothing"

@pytest.mark.no_gpu_leak_check(reason="known leak, tracked elsewhere")
def test_opted_out():
    KEEP.append(torch.ones(1 << 20))

def test_phases(gpu_leak_tracker):
    with gpu_leak_tracker.phase("infer"):
        y = torch.zeros(1000)
    assert gpu_leak_tracker.phases[-1].name == "infer"
"""


def test_leaks_clean_and_own_failures(pytester: pytest.Pytester) -> None:
    """One subprocess run (a torch import is slow), three aspects of its output."""
    pytester.makepyfile(test_core=CORE)
    report = pytester.path / "leaks.json"
    result = pytester.runpytest_subprocess(
        "--gpu-leak-check", "--gpu-leak-settle=0", f"--gpu-leak-json={report}"
    )
    _leaks_fail_culprit_named_clean_passes(result)
    _own_failure_and_leak_are_reported_apart(result)
    _summary_groups_by_signature_and_json_report(result, report)


def _leaks_fail_culprit_named_clean_passes(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=3, failed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "memdiag: leak check on cpu; function scope, tolerance 1.0 MiB, settle 0 s",
            "memdiag: no accelerator: *; checking CPU tensors",
        ]
    )
    # The failure says device, bytes over baseline, tolerance and the holder.
    result.stdout.fnmatch_lines(
        [
            "*_ test_leak_list _*",
            "memdiag: cpu: 4.0 MiB over baseline (tolerance 1.0 MiB), live tensors created "
            "since baseline; held by test_core.KEEP -> [[]0[]]* after the test",
            "*- memdiag leak report -*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["memdiag: cpu: 2.0 MiB *held by lru_cache of test_core.cached_buffer*"]
    )
    assert "test_clean -" not in result.stdout.str()


def _own_failure_and_leak_are_reported_apart(result: pytest.RunResult) -> None:
    result.stdout.fnmatch_lines(
        [
            "*short test summary info*",
            "FAILED test_core.py::test_leak_list - memdiag: cpu: 4.0 MiB over baseline*",
            "FAILED test_core.py::test_leak_lru_cache - memdiag: cpu: 2.0 MiB over baseline*",
            "FAILED test_core.py::test_fails_and_leaks - AssertionError: its own failure*",
            "FAILED test_core.py::test_fails_clean - AssertionError: fails, holds x*",
            "ERROR test_core.py::test_fails_and_leaks - memdiag: cpu: 2.0 MiB over baseline*",
        ]
    )
    # The frame of a failed test (sys.last_traceback) is not a leak.
    assert "ERROR test_core.py::test_fails_clean" not in result.stdout.str()


def _summary_groups_by_signature_and_json_report(result: pytest.RunResult, report: Path) -> None:
    result.stdout.fnmatch_lines(
        [
            "*= memdiag leak check =*",
            "memdiag: checked 6 tests (cpu; *): 3 clean, 3 leaking",
            "memdiag: overhead * ms per clean check *",
            "*2 tests *4.0 MiB  cpu: held by test_core.KEEP*[[]signature *[]]",
            "*test_core.py::test_leak_list",
            "*test_core.py::test_fails_and_leaks",
            "*1 test *2.0 MiB  cpu: held by lru_cache of test_core.cached_buffer*",
            f"memdiag: JSON report written to {report}",
        ]
    )
    data = json.loads(report.read_text())
    tests = {t["nodeid"]: t for t in data["tests"]}
    assert set(tests) == {
        "test_core.py::test_clean",
        "test_core.py::test_leak_list",
        "test_core.py::test_leak_lru_cache",
        "test_core.py::test_fails_and_leaks",
        "test_core.py::test_fails_clean",
        "test_core.py::test_phases",
    }
    leak = tests["test_core.py::test_leak_list"]
    assert leak["leaked"] is True
    assert leak["bytes"] == 4 * 1024**2
    assert leak["result"]["schema_version"] == 1
    assert leak["result"]["findings"][0]["kind"] == "live_tensors"
    phases = [p["name"] for p in tests["test_core.py::test_phases"]["result"]["phases"]]
    assert phases == ["infer"]
    assert (data["schema_version"], data["report"]) == (1, "pytest-session")
    assert data["totals"] == {
        "checked": 6,
        "leaked": 3,
        "known": 0,
        "over_peak": 0,
        "overhead_s": pytest.approx(data["totals"]["overhead_s"]),
    }
    assert data["summary"] == "6 tests checked: 3 leaking (8.0 MiB)"


SAME_BUG = """
import pytest, torch

CACHE = {}

@pytest.mark.parametrize("n", range(5))
def test_same_bug(n):
    CACHE[n] = torch.zeros(1 << 19)
"""


def test_one_bug_many_tests_is_one_summary_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_same=SAME_BUG)
    result = pytester.runpytest_subprocess("--gpu-leak-check", "--gpu-leak-settle=0")
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines(
        [
            "*5 tests *2.0 MiB  cpu: *[[]signature *[]]",
            "*test_same.py::test_same_bug[[]0[]]",
            "*test_same.py::test_same_bug[[]1[]]",
            "*test_same.py::test_same_bug[[]2[]]",
            "*...and 2 more (-v lists all)",
        ]
    )


FROZEN = """
import gc, torch

def test_freezes_garbage():
    cycle = [torch.zeros(1 << 20)]
    cycle.append(cycle)
    del cycle
    gc.freeze()  # the garbage cycle is now never collected

def test_after_it_is_clean():
    assert gc.get_freeze_count() > 0
"""


def test_gc_frozen_garbage_is_a_leak(pytester: pytest.Pytester) -> None:
    # A subprocess: the frozen garbage stays frozen for the life of that process only.
    pytester.makepyfile(test_frozen=FROZEN)
    result = pytester.runpytest_subprocess("--gpu-leak-check", "--gpu-leak-settle=0")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_frozen.py::test_freezes_garbage - memdiag: cpu: 4.0 MiB over "
            "baseline*gc-frozen garbage; held *"
        ]
    )

"""``--forked``, ``-n 2``, and no side effects without the flag."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from importlib.util import find_spec

import pytest

SUITE = """
import os
import pytest
import torch

KEEP = []

def test_leak_one():
    KEEP.append(torch.zeros(1 << 20))

def test_leak_two():
    KEEP.append(torch.zeros(1 << 20))

def test_clean():
    assert torch.zeros(1 << 20).sum() == 0

def test_fails_and_leaks():
    KEEP.append(torch.zeros(1 << 20))
    assert False, "its own failure"
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    if find_spec("torch") is None:
        pytest.skip("needs torch")
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_forked_checks_in_the_child_and_reports_in_the_parent(suite: pytest.Pytester) -> None:
    if find_spec("pytest_forked") is None:
        pytest.skip("needs pytest-forked")
    report = suite.path / "r.json"
    xml = suite.path / "junit.xml"
    result = suite.runpytest_subprocess(
        "--forked",
        "--gpu-leak-check",
        "--gpu-leak-settle=0",
        f"--gpu-leak-json={report}",
        f"--junitxml={xml}",
    )
    result.assert_outcomes(passed=1, failed=3, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            # The one-line message is rebuilt in the parent from the child's plain data.
            "FAILED test_suite.py::test_leak_one - memdiag: cpu: 4.0 MiB over baseline "
            "(tolerance 1.0 MiB), *; held by test_suite.KEEP*",
            "FAILED test_suite.py::test_leak_two - memdiag: cpu: 4.0 MiB over baseline*",
            "FAILED test_suite.py::test_fails_and_leaks*",
            "ERROR test_suite.py::test_fails_and_leaks - memdiag: cpu: 4.0 MiB over baseline*",
            "*- memdiag leak report -*",
            "memdiag: checked 4 tests (cpu; *): 1 clean, 3 leaking",
        ]
    )
    data = json.loads(report.read_text())
    leaked = {t["nodeid"]: t["leaked"] for t in data["tests"]}
    assert leaked == {
        "test_suite.py::test_leak_one": True,
        "test_suite.py::test_leak_two": True,
        "test_suite.py::test_clean": False,
        "test_suite.py::test_fails_and_leaks": True,
    }
    cases = {c.get("name"): c for c in ET.parse(xml).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_leak_one"].iter("property")}
    assert props["memdiag_leaked"] == "true"
    assert props["memdiag_bytes"] == str(4 * 1024**2)


def test_xdist_workers_check_and_the_controller_summarises(suite: pytest.Pytester) -> None:
    if find_spec("xdist") is None:
        pytest.skip("needs pytest-xdist")
    report = suite.path / "r.json"
    result = suite.runpytest_subprocess(
        "-n", "2", "--gpu-leak-check", "--gpu-leak-settle=0", f"--gpu-leak-json={report}"
    )
    result.assert_outcomes(passed=1, failed=3, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_suite.py::test_leak_one - memdiag: cpu: 4.0 MiB over baseline*",
            "ERROR test_suite.py::test_fails_and_leaks - memdiag: cpu: 4.0 MiB over baseline*",
            "memdiag: checked 4 tests (cpu; *): 1 clean, 3 leaking",
        ]
    )
    # One bug, one summary line, whichever worker ran each test.
    result.stdout.fnmatch_lines(["*3 tests *4.0 MiB  cpu: held by test_suite.KEEP*"])
    data = json.loads(report.read_text())
    assert sorted(t["nodeid"] for t in data["tests"]) == [
        "test_suite.py::test_clean",
        "test_suite.py::test_fails_and_leaks",
        "test_suite.py::test_leak_one",
        "test_suite.py::test_leak_two",
    ]


NO_SIDE_EFFECTS = """
import sys

def test_something():
    assert 1 + 1 == 2

def test_nothing_heavy_was_imported():
    heavy = [
        name for name in ("torch", "pynvml", "amdsmi", "rich", "memdiag.backends.registry",
                          "memdiag.tracker", "memdiag_pytest.manager")
        if name in sys.modules
    ]
    assert heavy == []
    assert "memdiag_pytest.plugin" in sys.modules  # the plugin itself is loaded
"""


def test_off_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off=NO_SIDE_EFFECTS)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert "memdiag: " not in result.stdout.str()  # no header, no summary


@pytest.mark.gpu
def test_forked_warns_once_when_cuda_is_initialised_before_forking(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest("import torch\ntorch.zeros(1, device='cuda')\n")
    pytester.makepyfile("def test_a(): pass\ndef test_b(): pass\n")
    result = pytester.runpytest_subprocess("--forked", "--gpu-leak-check")
    result.stdout.fnmatch_lines(["memdiag WARNING: CUDA was initialised in the pytest process*"])
    assert result.stdout.str().count("memdiag WARNING: CUDA was initialised") == 2  # live + summary


@pytest.mark.gpu
def test_cuda_leak_and_peak(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest, torch
KEEP = []

def test_leak():
    KEEP.append(torch.zeros(1 << 22, device="cuda"))

@pytest.mark.gpu_leak_check(max_peak="32MiB")
def test_peak(gpu_leak_tracker):
    with gpu_leak_tracker.phase("resize"):
        old = torch.zeros(1 << 22, device="cuda")
        new = torch.zeros(1 << 23, device="cuda")
        del old, new
"""
    )
    result = pytester.runpytest_subprocess("--gpu-leak-check", "--gpu-leak-settle=0")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *test_leak - memdiag: cuda:0: 16.0 MiB over baseline*held by *KEEP*",
            "FAILED *test_peak - memdiag: cuda:0: peak in phase 'resize' was 48.0 MiB over "
            "baseline, above the max_peak budget of 32.0 MiB",
        ]
    )

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


ISOLATED = """
import functools
import warnings

import torch

@functools.lru_cache(maxsize=None)
def load_weights(n):
    return torch.zeros(n)

def test_leaks():
    warnings.warn(UserWarning("said in the child"))
    load_weights(1 << 20)

def test_clean():
    x = torch.zeros(1 << 20)
    del x
"""


@pytest.mark.parametrize(
    ("isolation", "label"),
    [
        (["--forked"], "fork"),
        (["--gpu-leak-isolate=fork"], "fork"),
        (["--gpu-leak-isolate=spawn"], "spawn"),
        # memdiag's own option decides over --forked; each xdist worker spawns its tests.
        (["--gpu-leak-isolate=spawn", "--forked", "-n", "2"], "spawn"),
    ],
)
def test_isolation_fails_exactly_the_leaking_test_naming_its_retainer(
    pytester: pytest.Pytester, isolation: list[str], label: str
) -> None:
    if find_spec("torch") is None:
        pytest.skip("needs torch")
    pytester.makepyfile(test_isolated=ISOLATED)
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(
        "--gpu-leak-check", "--gpu-leak-settle=0", f"--gpu-leak-json={report}", *isolation
    )
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    result.stdout.fnmatch_lines_random(
        [
            f"memdiag: leak check on cpu; function scope, *, each test in a {label}ed process",
            "FAILED test_isolated.py::test_leaks - memdiag: cpu: 4.0 MiB over baseline "
            "(tolerance 1.0 MiB), live tensors*; held by lru_cache of "
            "test_isolated.load_weights -> cached value (cpu, 4.0 MiB) after the test",
            "*- memdiag leak report -*",
            "*UserWarning: said in the child",  # the child's warnings reach the summary
            "memdiag: checked 2 tests (cpu; *): 1 clean, 1 leaking",
        ]
    )
    data = json.loads(report.read_text())
    assert {t["nodeid"]: t["leaked"] for t in data["tests"]} == {
        "test_isolated.py::test_leaks": True,
        "test_isolated.py::test_clean": False,
    }


CRASHING = """
import os
import signal

def test_crashes():
    os.kill(os.getpid(), signal.SIGKILL)

def test_exits():
    os._exit(5)

def test_stops_the_session_after_this():
    pass
"""


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_a_child_that_dies_fails_its_test_saying_how(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_crashing=CRASHING)
    result = pytester.runpytest_subprocess(
        "--gpu-leak-check", "--gpu-leak-device=fake", f"--gpu-leak-isolate={mode}"
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            f"FAILED test_crashing.py::test_crashes - memdiag: the {mode}ed child running "
            "this test crashed with signal 9 (SIGKILL)*",
            f"FAILED test_crashing.py::test_exits - memdiag: the {mode}ed child running this "
            "test exited with status 5 before it finished*",
        ]
    )


def test_fork_is_refused_when_cuda_is_initialised_in_pytest(pytester: pytest.Pytester) -> None:
    """A fake CUDA state on CPU (the GPU twin initialises real CUDA)."""
    if find_spec("torch") is None:
        pytest.skip("needs torch")
    pytester.makeconftest("import torch\ntorch.cuda.is_initialized = lambda: True\n")
    pytester.makepyfile("def test_a(): pass\n")
    for option in ("--forked", "--gpu-leak-isolate=fork"):
        result = pytester.runpytest_subprocess("--gpu-leak-check", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            [
                "ERROR: memdiag: CUDA is initialised in the pytest process (by a conftest, "
                "plugin or module imported before the first test), and a child forked from "
                "it cannot use CUDA, so memdiag does not fork tests (--gpu-leak-isolate=fork, "
                "--forked, @pytest.mark.forked); use --gpu-leak-isolate=spawn*"
            ]
        )
    result = pytester.runpytest_subprocess("--gpu-leak-check", "--gpu-leak-isolate=spawn")
    result.assert_outcomes(passed=1)


NO_SIDE_EFFECTS = """
import sys

def test_something():
    assert 1 + 1 == 2

def test_nothing_heavy_was_imported():
    heavy = [
        name for name in ("torch", "pynvml", "amdsmi", "rich", "memdiag.backends.registry",
                          "memdiag.check.tracker", "memdiag_pytest.manager")
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


CUDA_ISOLATED = """
import functools

import torch

@functools.lru_cache(maxsize=None)
def load_weights(n):
    return torch.zeros(n, device="cuda")

def test_leaks():
    load_weights(1 << 22)

def test_clean():
    x = torch.zeros(1 << 22, device="cuda")
    del x
"""


@pytest.mark.gpu
@pytest.mark.parametrize(
    "isolation", ["--forked", "--gpu-leak-isolate=fork", "--gpu-leak-isolate=spawn"]
)
def test_cuda_isolation_fails_exactly_the_leaking_test(
    pytester: pytest.Pytester, isolation: str
) -> None:
    if isolation == "--forked":
        pytest.importorskip("pytest_forked")  # a dependency of memdiag; absent where not installed
    pytester.makepyfile(test_isolated=CUDA_ISOLATED)
    result = pytester.runpytest_subprocess("--gpu-leak-check", "--gpu-leak-settle=0", isolation)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "memdiag: leak check on cuda:0*each test in a *ed process",
            "FAILED test_isolated.py::test_leaks - memdiag: cuda:0: 16.0 MiB over baseline*"
            "held by lru_cache of test_isolated.load_weights*",
            "memdiag: checked 2 tests (cuda:0*): 1 clean, 1 leaking",
        ]
    )


@pytest.mark.gpu
def test_cuda_in_the_parent_refuses_fork_and_spawn_works(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("import torch\ntorch.zeros(1, device='cuda')\n")
    pytester.makepyfile(test_isolated=CUDA_ISOLATED)
    result = pytester.runpytest_subprocess("--gpu-leak-check", "--gpu-leak-isolate=fork")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: memdiag: CUDA is initialised in the pytest process*"])
    result = pytester.runpytest_subprocess(
        "--gpu-leak-check", "--gpu-leak-settle=0", "--gpu-leak-isolate=spawn"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_isolated.py::test_leaks - memdiag: cuda:0: *"])


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

"""Tests that leave the interpreter hostile to memdiag: ``sys.modules["gc"]`` replaced,
a recursion limit of 60, a gc callback that raises.  The check and
its report run in the interpreter the session started with (was INTERNALERROR), and
the test's state is put back after."""

from __future__ import annotations

import json
from importlib.util import find_spec

import pytest

pytestmark = pytest.mark.skipif(find_spec("torch") is None, reason="needs torch")

HOSTILE = """
import gc, sys, types, torch

KEEP = []

def test_replaces_gc_module_and_leaks():
    KEEP.append(torch.ones(1 << 20))
    sys.modules["gc"] = types.SimpleNamespace(collect=lambda: 1 / 0)

def test_lowers_the_recursion_limit_and_leaks():
    KEEP.append(torch.ones(1 << 20))
    sys.setrecursionlimit(60)

def test_leaves_a_raising_gc_callback_and_leaks():
    KEEP.append(torch.ones(1 << 20))
    gc.callbacks.append(lambda *args: 1 / 0)

def test_sees_its_own_state_afterwards():
    assert isinstance(sys.modules["gc"], types.SimpleNamespace)
    assert sys.getrecursionlimit() == 60 and gc.callbacks
    sys.setrecursionlimit(1000)
    sys.modules["gc"] = gc
    gc.callbacks.clear()
"""


def test_a_test_that_leaves_the_interpreter_hostile_is_still_checked(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_hostile=HOSTILE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--gpu-leak-check", "--gpu-leak-settle=0", "-p", "no:randomly"
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(["*test_replaces_gc_module_and_leaks - memdiag: cpu: 4.0 MiB*"])


REPORT_PATH_BROKEN = """
import hashlib, json, torch

KEEP = []
REAL = (json.dumps, hashlib.sha1)

def _broken(*args, **kwargs):
    raise RuntimeError("the test's replacement")

def test_passes_with_report_functions_replaced():
    json.dumps = hashlib.sha1 = _broken

def test_leaks_with_report_functions_replaced():
    KEEP.append(torch.ones(1 << 20))

def test_puts_them_back():
    assert json.dumps is _broken
    json.dumps, hashlib.sha1 = REAL
"""


def test_a_leak_is_reported_with_the_report_path_replaced(pytester: pytest.Pytester) -> None:
    """A passing check puts back only what it calls; the failing one puts back the rest
    (json, hashlib: the signature and the JSON report) before it describes the leak."""
    pytester.makepyfile(test_broken=REPORT_PATH_BROKEN)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--gpu-leak-check", "--gpu-leak-settle=0",
        "-p", "no:randomly", "--gpu-leak-json=out.json",
    )  # fmt: skip
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_leaks_with_report_functions_replaced - memdiag: cpu: 4*"])
    report = json.loads((pytester.path / "out.json").read_text())
    leaking = [t for t in report["tests"] if t.get("leaked")]
    assert [t["nodeid"].rsplit("::", 1)[-1] for t in leaking] == [
        "test_leaks_with_report_functions_replaced"
    ]


LEFT_BROKEN = """
import os, torch

REAL = os.getpid

def test_leaves_getpid_broken():
    os.getpid = None

def test_next_one_is_checked():
    x = torch.ones(10)

def test_puts_it_back():
    os.getpid = REAL
"""


def test_the_next_baseline_is_taken_in_memdiags_interpreter(pytester: pytest.Pytester) -> None:
    """A test that leaves ``os.getpid = None``: the next test's baseline runs in the
    interpreter the session started with (its check already did), not into a
    TypeError of the test's making."""
    pytester.makepyfile(test_left=LEFT_BROKEN)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--gpu-leak-check", "--gpu-leak-settle=0", "-p", "no:randomly"
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=3)

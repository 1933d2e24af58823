"""Tests that leave the interpreter hostile to memdiag: ``sys.modules["gc"]`` replaced,
a recursion limit of 60, a gc callback that raises.  The check and
its report run in the interpreter the session started with (was INTERNALERROR), and
the test's state is put back after."""

from __future__ import annotations

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

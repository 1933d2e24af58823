"""The examples' leaky engines fail under `pytest --gpu-leak-check`; fixed ones pass.

Runs on CPU in CI; on the device machine with MEMDIAG_EXAMPLE_DEVICE=cuda.  Each test
runs in its own forked child (`--forked`), as engine test suites isolate engines.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEVICE = os.environ.get("MEMDIAG_EXAMPLE_DEVICE", "cpu")

# bug -> a name the failure's one-line summary must carry (the culprit)
LEAKY = {
    "lru_cache": "supports_kw",
    "gc_freeze": "gc.freeze()",
    "rope_cache": "_ROPE_CACHE",
    "workspace_singleton": "Workspace._instance",
    "kv_cache": "_LIVE_BLOCK_MANAGERS",
    "thread": "toy-detokenizer",
}
FIXABLE = [*LEAKY, "resize_no_empty_cache"]

SUITE = f"""
import sys
import pytest
sys.path.insert(0, {str(EXAMPLES)!r})
import toy_engine

DEVICE = {DEVICE!r}

@pytest.mark.parametrize("bug", {list(LEAKY)!r})
def test_leaky(bug):
    assert toy_engine.main(["--device", DEVICE, "--bug", bug]) == 0

@pytest.mark.parametrize("bug", {FIXABLE!r})
def test_fixed(bug):
    assert toy_engine.main(["--device", DEVICE, "--bug", bug, "--fixed"]) == 0

def test_no_bug():
    assert toy_engine.main(["--device", DEVICE]) == 0

def test_resize_without_empty_cache_is_allocator_cache_not_a_leak():
    assert toy_engine.main(["--device", DEVICE, "--bug", "resize_no_empty_cache"]) == 0
"""


def test_leaky_examples_fail_naming_the_culprit_and_fixed_ones_pass(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_engine=SUITE)
    result = pytester.runpytest_subprocess(
        "--forked", "--gpu-leak-check", f"--gpu-leak-device={DEVICE}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=len(LEAKY), passed=len(FIXABLE) + 2)
    lines = [line for line in result.outlines if line.startswith("FAILED")]
    for bug, culprit in LEAKY.items():
        (line,) = [x for x in lines if f"test_leaky[{bug}]" in x]
        assert culprit in line, line

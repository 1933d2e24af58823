"""Baselines after wider-scoped fixtures, and the module scope that blames engine fixtures."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

pytestmark = pytest.mark.skipif(find_spec("torch") is None, reason="needs torch")

ENGINES = """
import pytest, torch

REGISTRY = []

class Engine:
    def __init__(self):
        self.weights = torch.zeros(1 << 21)  # 8 MiB

    def shutdown(self):
        self.weights = None

@pytest.fixture(scope="module")
def engine():
    e = Engine()
    yield e
    e.shutdown()

@pytest.fixture(scope="module")
def leaky_engine():
    e = Engine()
    REGISTRY.append(e)  # never removed: survives its own teardown
    yield e
    e.shutdown_incomplete = True

@pytest.fixture(scope="session")
def lazy_engine():
    return Engine()

@pytest.fixture
def per_test_buffer():
    return torch.zeros(1 << 18)

def test_uses_engine(engine, per_test_buffer):
    assert engine.weights.numel() == 1 << 21

def test_uses_engine_again(engine):
    assert engine.weights is not None

def test_lazy_session_fixture(per_test_buffer, request):
    # Set up after this test's baseline: its 8 MiB belong to the fixture.
    e = request.getfixturevalue("lazy_engine")
    assert e.weights is not None
"""

LEAKY = """
from test_engines import Engine, REGISTRY
import pytest

@pytest.fixture(scope="module")
def leaky_engine():
    e = Engine()
    REGISTRY.append(e)  # never removed: survives its own teardown
    yield e

def test_first(leaky_engine):
    pass

def test_second(leaky_engine):
    pass
"""


def test_wider_fixtures_are_not_blamed_on_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_engines=ENGINES)
    result = pytester.runpytest_subprocess("--gpu-leak-check", "--gpu-leak-settle=0")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["memdiag: checked 3 tests (*): 3 clean, 0 leaking"])


def test_module_scope_blames_the_fixture_that_kept_its_memory(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_engines=ENGINES, test_leaky=LEAKY)
    result = pytester.runpytest_subprocess(
        "--gpu-leak-check", "--gpu-leak-scope=module", "--gpu-leak-settle=0", "-p", "no:randomly"
    )
    # The engine shut down correctly: no failure.  The leaky one fails at its teardown.
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(
        [
            "ERROR test_leaky.py::test_second - memdiag: cpu: 8.0 MiB over baseline "
            "(tolerance 1.0 MiB), *; held by test_engines.REGISTRY*after the teardown of "
            "module-scoped fixture 'leaky_engine' of test_leaky.py",
        ]
    )
    result.stdout.fnmatch_lines(
        ["memdiag: checked 2 scopes (cpu; module scope, *): 1 clean, 1 leaking"]
    )

"""Fixtures for the retainer tests: a real, throwaway module to leak into."""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Iterator

import pytest

_COUNTER = itertools.count()


@pytest.fixture
def leak_module() -> Iterator[types.ModuleType]:
    """A real module in ``sys.modules`` (``memdiag_leak_N``), removed afterwards."""
    name = f"memdiag_leak_{next(_COUNTER)}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        yield module
    finally:
        sys.modules.pop(name, None)
        module.__dict__.clear()

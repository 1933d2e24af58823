"""Helpers for the retainer tests: real leaks, registered in a real throwaway module."""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

_COUNTER = itertools.count()


def targets_of(tensors: Iterable[Any]) -> dict[int, int]:
    """Storage key -> storage bytes, as the tracker computes them."""
    out: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        out[storage._cdata] = storage.nbytes()
    return out


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

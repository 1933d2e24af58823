"""Shared helpers for the retainer tests (importable; fixtures live in conftest)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def targets_of(tensors: Iterable[Any]) -> dict[int, int]:
    """Storage key -> storage bytes, as the tracker computes them."""
    out: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        out[storage._cdata] = storage.nbytes()
    return out

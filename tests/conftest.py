"""Tests marked ``gpu`` run on the device machine only."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch  # here, once: pytester's tests drop modules imported during a test

        available = bool(torch.cuda.is_available())
    except ImportError:
        available = False
    if not available:
        skip = pytest.mark.skip(reason="needs a CUDA device (run on the device machine)")
        for item in gpu_items:
            item.add_marker(skip)

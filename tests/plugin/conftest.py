"""Shared by the plugin tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest cuts short-summary lines at the terminal width; runs inherit this width."""
    monkeypatch.setenv("COLUMNS", "300")

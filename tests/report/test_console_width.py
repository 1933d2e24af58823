"""A terminal too narrow to read (``COLUMNS=0``, a 3-column pane) gets 80 columns:
rich would wrap every line at a character or, at width 0, print nothing at all."""

from __future__ import annotations

import io

import pytest

from memdiag.report.console import MIN_WIDTH, plain_console


@pytest.mark.parametrize("columns", ["0", "1", "3", "-5"])
def test_a_tiny_terminal_width_falls_back_to_80_columns(
    monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    out = io.StringIO()
    console = plain_console(out)
    console.print("LEAK: 16.0 MiB leaked; top: 16.0 MiB held by __main__.KEEP")
    assert console.width == 80
    assert out.getvalue() == "LEAK: 16.0 MiB leaked; top: 16.0 MiB held by __main__.KEEP\n"


def test_a_usable_width_is_kept() -> None:
    assert plain_console(io.StringIO(), width=MIN_WIDTH).width == MIN_WIDTH
    assert plain_console(io.StringIO(), width=200).width == 200

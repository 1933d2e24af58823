"""Options of ``memdiag run`` out of range are usage errors (exit 2) that say what is
accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from memdiag.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--settle", "nan"], "--settle 'nan' is not a number of seconds"),
        (["--settle", "inf"], "--settle 'inf' is not a number of seconds"),
        (["--settle", "1e400"], "--settle '1e400' is not a number of seconds"),
        (["--tolerance", "1" * 400], "a size of 400 digits is larger than any device"),
        (["--tolerance", "1e400%"], "a percentage must lie between 0% and 100%"),
        (["--tolerance", "nan%"], "a percentage must lie between 0% and 100%"),
    ],
)
def test_sizes_and_seconds_out_of_range_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    script = tmp_path / "clean.py"
    script.write_text("pass\n")
    assert main(["run", *args, str(script)]) == 2
    assert message in capsys.readouterr().err

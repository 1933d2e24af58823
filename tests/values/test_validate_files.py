"""Report and known-leaks files are read only when they are regular files of sane
size: a FIFO would block every command forever, ``/dev/zero`` never ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memdiag.cli import main
from memdiag.values import validate
from memdiag.values.validate import ReportFormatError, read_report_bytes


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    os.mkfifo(path)
    return path


def test_a_fifo_or_a_device_is_refused_without_reading(fifo: Path) -> None:
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(ReportFormatError, match="not a regular file"):
            read_report_bytes(path)
    with pytest.raises(IsADirectoryError):
        read_report_bytes(fifo.parent)


def test_an_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "MAX_REPORT_BYTES", 10)
    big = tmp_path / "big.json"
    big.write_text("[" + " " * 20 + "]")
    with pytest.raises(ReportFormatError, match="larger than"):
        read_report_bytes(big)


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "{f}"],
        ["merge", "{f}"],
        ["compare", "{f}", "{f}"],
        ["known", "show", "{f}"],
        ["known", "update", "{f}", "-o", "{d}/k.json"],
        ["run", "--known", "{f}", "-c", "pass"],
    ],
)
def test_every_command_that_reads_a_report_says_a_fifo_is_not_one(
    fifo: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    args = [a.format(f=fifo, d=fifo.parent) for a in argv]
    assert main(args) == 2
    assert "not a regular file (a FIFO, device or socket)" in capsys.readouterr().err


def test_merge_of_a_directory_skips_what_is_not_a_file(
    fifo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["merge", str(fifo.parent)]) == 2
    assert "no memdiag reports (*.json) found" in capsys.readouterr().err

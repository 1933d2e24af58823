"""User and heap text is never rich markup, and the words are right.

Class: any string memdiag did not write itself (exception messages, ``sys.exit``
text, phase names, report fields, its own install hints with ``[rocm]``) is printed
verbatim; counts read "1 storage (1 tensor)"; no output line ends in spaces.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from memdiag.cli import main
from memdiag.report.console import plain_console

MARKUP = "[/] [bold]x[/bold] [red] :smile: [link=http://x]y"

SCRIPTS = {
    "exception message": f"raise ValueError({MARKUP!r})",
    "sys.exit text": f"import sys\nsys.exit({MARKUP!r})",
    "phase name": f"import memdiag, torch\nmemdiag.phase({MARKUP!r})\nKEEP = torch.ones(1 << 20)",
    "leaking global with markup in its key": (
        f"import torch\nHOLD = {{{MARKUP!r}: torch.ones(1 << 20)}}"
    ),
}


@pytest.mark.parametrize("body", SCRIPTS.values(), ids=list(SCRIPTS))
def test_user_text_is_printed_verbatim_never_as_markup(
    body: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "s.py"
    script.write_text(body + "\n")
    code = main(["run", "--device", "cpu", "--settle", "0", str(script)])
    err = capsys.readouterr().err
    assert code in (1, 3), err
    assert "internal error" not in err
    assert MARKUP in err.replace("\n", " ") or MARKUP.split()[0] in err
    assert not [line for line in err.splitlines() if line != line.rstrip()], err


def test_devices_keeps_its_own_install_hint_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    if "amdsmi" in out and "unavailable" in out:
        assert "memdiag[rocm]" in out.replace("\n", "")
    assert not [line for line in out.splitlines() if line != line.rstrip()]


def test_plain_console_prints_markup_and_emoji_codes_as_written() -> None:
    buffer = io.StringIO()
    console = plain_console(buffer, width=200)
    console.print(MARKUP)
    assert buffer.getvalue() == MARKUP + "\n"


def test_cpu_report_has_no_driver_columns_no_nested_parentheses_no_plural_slips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "one.py"
    script.write_text("import torch\nONE = torch.ones(1 << 20)\n")
    assert main(["run", "--device", "auto", "--settle", "0", str(script)]) == 1
    err = capsys.readouterr().err
    flat = " ".join(err.split())
    assert "1 storage (1 tensor)" in flat
    assert "driver" not in err.split("\n")[0]
    assert "driver used" not in err and "this process" not in err
    assert "(no accelerator (" not in flat
    assert "(s)" not in err
    assert not [line for line in err.splitlines() if line != line.rstrip()], err

"""`memdiag run`: exit codes and bad input, through main() and the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memdiag.cli import main

LEAKY = """
import torch
KEEP = []
def main():
    KEEP.append(torch.zeros(1024, 1024))  # 4 MiB kept by a module global
main()
"""
CLEAN = """
import sys, torch
assert sys.argv[1:] == ["--flag", "x"], sys.argv
assert __name__ == "__main__"
x = torch.zeros(1024, 1024)
del x
"""


def _script(tmp_path: Path, body: str, name: str = "script.py") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def test_clean_script_exits_0_with_argv_passed(tmp_path: Path) -> None:
    assert main(["run", "--device", "cpu", _script(tmp_path, CLEAN), "--flag", "x"]) == 0


def test_leaky_script_exits_1_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    code = main(["run", "--device", "cpu", "--json", str(out), _script(tmp_path, LEAKY)])
    assert code == 1
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["leaked"] is True
    assert data["findings"][0]["kind"] == "live_tensors"
    assert data["findings"][0]["bytes"] == 4 * 1024 * 1024
    assert "LEAK" in capsys.readouterr().err


def test_globals_of_main_are_alive_at_the_check_but_released_after(tmp_path: Path) -> None:
    main(["run", "--device", "cpu", _script(tmp_path, LEAKY)])
    assert sys.modules["__main__"].__dict__.get("KEEP") is None


def test_missing_script_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(tmp_path / "nope.py")]) == 2
    assert "script not found" in capsys.readouterr().err


def test_script_exit_code_3_with_memory_back_exits_3(tmp_path: Path) -> None:
    body = "import sys, torch\nx = torch.zeros(10)\nsys.exit(3)\n"
    assert main(["run", "--device", "cpu", _script(tmp_path, body)]) == 3


def test_sys_exit_0_is_success(tmp_path: Path) -> None:
    assert main(["run", "--device", "cpu", _script(tmp_path, "import sys\nsys.exit(0)\n")]) == 0


def test_exception_with_memory_back_exits_3_and_prints_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = (
        "import torch\ndef f():\n    big = torch.zeros(1024, 1024)\n"
        "    raise ValueError('boom')\nf()\n"
    )
    assert main(["run", "--device", "cpu", _script(tmp_path, body)]) == 3
    err = capsys.readouterr().err
    assert "ValueError: boom" in err and "memdiag/workers/runner.py" not in err
    assert "script failed: the script raised ValueError: boom" in err


def test_exception_and_leak_exits_1(tmp_path: Path) -> None:
    body = LEAKY + "raise RuntimeError('after leaking')\n"
    assert main(["run", "--device", "cpu", _script(tmp_path, body)]) == 1


def test_syntax_error_is_a_script_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--device", "cpu", _script(tmp_path, "def f(:\n")]) == 3
    assert "SyntaxError" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tolerance", "lots"], "--tolerance 'lots'"),
        (["--settle", "-1"], "--settle '-1' is not a number of seconds"),
        (["--device", "cuda:7"], "cannot be checked"),
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["run", *args, _script(tmp_path, CLEAN)]) == 2
    assert message in capsys.readouterr().err


def test_no_subcommand_is_a_usage_error() -> None:
    assert main([]) == 2


def test_report_rerenders_a_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    main(["run", "--device", "cpu", "--json", str(out), _script(tmp_path, LEAKY)])
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    assert "4.0 MiB" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["report", str(tmp_path / "bad.json")]) == 2


def test_real_command_line(tmp_path: Path) -> None:
    """The installed entry point, in a fresh process, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "memdiag", "run", _script(tmp_path, LEAKY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "checking CPU tensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_devices_lists_every_backend_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "nvml", "amdsmi", "cpu", "fake"):
        assert name in out
    assert "unavailable" in out


def test_memdiags_own_failure_exits_4_never_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from memdiag.check.tracker import Tracker

    def broken_check(self: Tracker) -> None:
        raise RuntimeError("a bug in memdiag")

    monkeypatch.setattr(Tracker, "check", broken_check)  # wiring: an internal failure
    assert main(["run", "--device", "cpu", _script(tmp_path, CLEAN), "--flag", "x"]) == 4
    err = capsys.readouterr().err
    assert "memdiag: internal error" in err and "a bug in memdiag" in err
    assert sys.modules["__main__"].__dict__.get("KEEP") is None  # the script was released

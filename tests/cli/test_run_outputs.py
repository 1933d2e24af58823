"""`memdiag run --json --html --junit`: every report written, exit codes unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from memdiag.cli import main

CLEAN = "import torch\nx = torch.zeros(256)\ndel x\n"


def test_run_writes_every_report_and_keeps_exit_codes(toy_runs: dict[str, Path]) -> None:
    for name in ("fixed", "lru_cache"):
        for suffix in (".json", ".html", ".xml"):
            assert toy_runs[name].with_suffix(suffix).stat().st_size > 0
    stderr = toy_runs["lru_cache"].with_suffix(".txt").read_text()
    assert "LEAK 10.0 MiB live tensors on cpu" in stderr
    assert "OK: memory within tolerance: cpu" in toy_runs["fixed"].with_suffix(".txt").read_text()


def test_unwritable_report_path_fails_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "s.py"
    script.write_text("raise SystemExit('the script must not run')\n")
    code = main(["run", "--device", "cpu", "--html", str(tmp_path / "no" / "r.html"), str(script)])
    assert code == 2
    assert f"--html {tmp_path / 'no' / 'r.html'}: directory" in capsys.readouterr().err
    assert main(["run", "--device", "cpu", "--junit", str(tmp_path), str(script)]) == 2


def test_clean_run_writes_passing_junit_and_html(tmp_path: Path) -> None:
    script = tmp_path / "clean.py"
    script.write_text(CLEAN)
    html, junit = tmp_path / "r.html", tmp_path / "r.xml"
    args = ["run", "--device", "cpu", "--html", str(html), "--junit", str(junit), str(script)]
    assert main(args) == 0
    assert 'failures="0"' in junit.read_text()
    assert "memory within tolerance" in html.read_text()

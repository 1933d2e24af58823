"""`python -m memdiag.agent` runs workers with `memdiag run`'s runner: -c, `--`, os._exit
and forked children behave as they do under `memdiag run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import json, os, sys, torch
json.dump(sys.argv, open(os.environ["ARGV_OUT"], "w"))
KV = torch.zeros(1024, 1024)  # 4 MiB the worker never frees
{end}
"""


def _agent(tmp_path: Path, code: str, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    reports = tmp_path / "reports"
    done = subprocess.run(
        [sys.executable, "-m", "memdiag.agent", "--dir", str(reports), "-c", code, *args],
        cwd=REPO,
        env={**os.environ, "ARGV_OUT": str(tmp_path / "argv.json")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, reports


def test_a_worker_that_ends_with_os_exit_still_reports_and_keeps_its_code(
    tmp_path: Path,
) -> None:
    done, reports = _agent(tmp_path, WORKER.format(end="os._exit(4)"), "--", "x")
    assert done.returncode == 4, done.stderr
    assert json.loads((tmp_path / "argv.json").read_text()) == ["-c", "--", "x"]
    (path,) = reports.iterdir()
    data = json.loads(path.read_text())
    assert data["leaked"] is True and data["context"]["agent"] is True


def test_a_child_the_worker_forks_writes_no_report_of_its_own(tmp_path: Path) -> None:
    end = (
        "pid = os.fork()\n"
        "if pid:\n"
        "    os.waitpid(pid, 0)\n"
        "else:\n"
        "    child = [0] * 1000  # falls off the end (no torch op: libgomp is not fork-safe)\n"
    )
    done, reports = _agent(tmp_path, WORKER.format(end=end))
    assert done.returncode == 0, done.stderr
    (path,) = reports.iterdir()  # the worker's report only
    assert json.loads(path.read_text())["context"]["pid"] == int(path.stem.split("-")[1])

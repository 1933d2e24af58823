"""Without an importable torch: every torch-based backend says why, nothing crashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from memdiag.backends.cpu import CpuBackend
from memdiag.backends.fake import FakeBackend
from memdiag.backends.registry import Selection
from memdiag.check.tracker import Tracker

ROOT = Path(__file__).resolve().parents[2]
# sys.modules["torch"] = None makes `import torch` raise ImportError, as on a machine
# where torch is missing or broken.
PRELUDE = "import sys; sys.modules['torch'] = None\nfrom memdiag.cli import main\n"


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_devices_lists_torch_and_cpu_as_unavailable_with_the_reason(tmp_path: Path) -> None:
    proc = _run("sys.exit(main(['devices']))", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "torch cannot be imported" in out
    assert "Traceback" not in proc.stderr


def test_run_without_torch_is_a_usage_error_that_says_why(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("print('hi')\n")
    proc = _run(f"sys.exit(main(['run', {str(script)!r}]))", tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "memdiag: backend 'cpu' is unavailable: torch cannot be imported" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cpu_backend_probe_is_available_with_torch() -> None:
    assert CpuBackend().probe().available


def test_an_unavailable_backend_reads_nothing_and_the_tracker_still_checks() -> None:
    broken = FakeBackend(["fake:1"], unavailable="driver went away")
    good = FakeBackend(["fake:0"])
    assert not broken.probe().available
    assert broken.probe().reason == "driver went away"
    selection = Selection((good, broken), ("fake:0",))
    with Tracker(device=selection, settle=0.0) as tracker:
        pass
    assert tracker.result is not None and not tracker.result.leaked

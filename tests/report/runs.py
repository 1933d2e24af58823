"""Run memdiag in a fresh process, as CI does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "examples" / "toy_engine.py"


def run_memdiag(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m memdiag ARGS`` in a fresh process, GitHub Actions switched off."""
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}
    return subprocess.run(
        [sys.executable, "-m", "memdiag", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=300,
        check=False,
    )

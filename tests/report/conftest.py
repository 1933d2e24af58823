"""Real reports of the toy engine, run once per session in a subprocess (CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "examples" / "toy_engine.py"


def run_memdiag(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m memdiag ARGS`` in a fresh process, GitHub Actions switched off."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "GITHUB_ACTIONS"}
    return subprocess.run(
        [sys.executable, "-m", "memdiag", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``fixed`` and ``lru_cache`` runs of the toy engine: their JSON, HTML and JUnit."""
    out = tmp_path_factory.mktemp("toy_runs")
    runs = {"fixed": ["--fixed"], "lru_cache": ["--bug", "lru_cache"]}
    paths: dict[str, Path] = {}
    for name, script_args in runs.items():
        done = run_memdiag(
            "run",
            "--device",
            "cpu",
            "--json",
            str(out / f"{name}.json"),
            "--html",
            str(out / f"{name}.html"),
            "--junit",
            str(out / f"{name}.xml"),
            str(TOY),
            *script_args,
        )
        expected = 0 if name == "fixed" else 1
        assert done.returncode == expected, done.stderr
        (out / f"{name}.txt").write_text(done.stderr)
        paths[name] = out / f"{name}.json"
    return paths

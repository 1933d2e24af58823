"""Real reports of the toy engine, run once per session in a subprocess (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.runs import TOY, run_memdiag


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

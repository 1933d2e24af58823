"""Tests marked ``gpu`` run on the device machine only; real reports of the toy engine,
run once per session in a subprocess (CPU), for the report and CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.runs import TOY, run_memdiag


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch  # here, once: pytester's tests drop modules imported during a test

        available = bool(torch.cuda.is_available())
    except ImportError:
        available = False
    if not available:
        skip = pytest.mark.skip(reason="needs a CUDA device (run on the device machine)")
        for item in gpu_items:
            item.add_marker(skip)


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

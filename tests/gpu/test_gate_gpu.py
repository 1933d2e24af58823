"""The CI gate on a real CUDA device: `python -m pytest tests/gpu -m gpu`.

A suite runs twice under `pytest --gpu-leak-check --gpu-leak-device=cuda:0` (base,
then head with a CUDA lru_cache leak and a doubled peak, no phases marked: the
allocator's peak counter sees it), and `memdiag compare` fails naming both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memdiag.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MiB = 1024**2

BASE = """
import functools

import torch


@functools.lru_cache(maxsize=None)
def cached_weights(n):
    return torch.ones(n, device="cuda")


def test_cache():
    assert torch.ones(1 << 20, device="cuda").sum().item() > 0


def test_peak():
    buffer = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")  # 64 MiB, freed
    buffer.fill_(1)
    del buffer
"""
HEAD = BASE.replace(
    'assert torch.ones(1 << 20, device="cuda").sum().item() > 0',
    "assert cached_weights(4 << 20).sum().item() > 0",  # 16 MiB kept by the cache
).replace("torch.empty(64 << 20", "torch.empty(128 << 20")


def _session(root: Path, name: str, source: str) -> Path:
    suite = root / name
    suite.mkdir()
    (suite / "test_suite.py").write_text(source)
    report = root / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "PYTEST_ADDOPTS")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--gpu-leak-check",
         "--gpu-leak-device=cuda:0", "--gpu-leak-settle=1", f"--gpu-leak-json={report}"],
        cwd=suite, capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return report


def test_compare_names_the_cuda_leak_and_the_doubled_peak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _session(tmp_path, "base", BASE)
    head = _session(tmp_path, "head", HEAD)
    tests = {t["nodeid"]: t for t in json.loads(head.read_text())["tests"]}
    (cuda,) = [d for d in tests["test_suite.py::test_peak"]["devices"] if d["device"] == "cuda:0"]
    assert cuda["peak_exact"] is True  # the allocator's peak counter, not phase ends
    assert 128 * MiB <= cuda["peak"] < 140 * MiB, cuda
    (leak,) = tests["test_suite.py::test_cache"]["leaks"]
    assert (leak["device"], leak["bytes"]) == ("cuda", 16 * MiB)
    assert leak["roots"] == ["lru_cache of test_suite.cached_weights"]
    code = main(["compare", str(base), str(head)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "regression: test_suite.py::test_cache: new leak of 16.0 MiB on cuda" in out
    assert "regression: test_suite.py::test_peak: peak on cuda:0 grew 6" in out  # 64 -> 128 MiB
    assert main(["compare", str(base), str(base)]) == 0

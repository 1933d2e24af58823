"""`memdiag run` on each example names the right culprit in its first finding.

Each run is a fresh process, as a user runs it (the gc_freeze bug freezes the heap
of the process it runs in).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# bug -> (exit code, class of the first finding, text its first chain must hold)
CASES = {
    "lru_cache": (
        1,
        "live_tensors",
        "lru_cache of __main__.supports_kw -> cache key -> bound method ToyModel.forward",
    ),
    "gc_freeze": (1, "gc_frozen", "gc.freeze() -> "),
    "rope_cache": (1, "live_tensors", "__main__._ROPE_CACHE"),
    "workspace_singleton": (1, "live_tensors", "__main__.Workspace._instance -> .buffer"),
    "kv_cache": (1, "live_tensors", "__main__._LIVE_BLOCK_MANAGERS -> [0].kv_cache"),
    "thread": (1, "live_tensors", "thread 'toy-detokenizer' in Detokenizer.run"),
    "resize_no_empty_cache": (0, None, None),
}


@pytest.mark.parametrize("bug", sorted(CASES))
def test_memdiag_run_names_the_culprit(bug: str, tmp_path: Path) -> None:
    code, kind, chain = CASES[bug]
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "memdiag", "run", "--device", "cpu"),
            *("--json", str(out), "examples/toy_engine.py", "--bug", bug),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    leaks = [f for f in data["findings"] if f["is_leak"]]
    if kind is None:
        assert leaks == []
        return
    first = leaks[0]
    assert first["kind"] == kind
    assert chain in first["retainers"][0]["chain_text"]
    named = "`__main__` in the chains is examples/toy_engine.py" in data["notices"]
    assert named == ("__main__." in first["retainers"][0]["chain_text"])


def test_the_fixed_engine_exits_0() -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "memdiag", "run", "--device", "cpu"),
            *("examples/toy_engine.py", "--bug", "all", "--fixed"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK: memory within tolerance" in proc.stderr

"""The in-worker agent: a child's heap leak, explained with the child's own chain."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import mp_workers
import pytest

import memdiag.agent
from memdiag.values.findings import FindingKind
from memdiag.workers.merge import WorkerReportDir, merge_worker_reports

SPAWN = multiprocessing.get_context("spawn")
REPO = Path(__file__).resolve().parents[2]


def test_a_workers_lru_cache_leak_reaches_the_parent_with_the_workers_chain(
    tmp_path: Path,
) -> None:
    reports = WorkerReportDir(tmp_path)
    reports.activate()  # the child inherits $MEMDIAG_AGENT_DIR
    try:
        worker = SPAWN.Process(target=memdiag.agent.wrap(mp_workers.cached_tables))
        worker.start()
        worker.join(60)
        findings = reports.findings()
    finally:
        reports.close()
    assert worker.exitcode == 0
    assert memdiag.agent.ENV_DIR not in os.environ
    (leak,) = findings
    assert leak.kind is FindingKind.LIVE_TENSORS and leak.is_leak
    assert leak.message.startswith(f"worker {worker.pid} (`python")
    assert leak.nbytes == 2048 * 512 * 4
    assert leak.tensors[0].example.shape == (2048, 512)
    chain = leak.retainers[0].chain_text()
    assert chain.startswith("lru_cache of mp_workers.table -> cached value"), chain


WORKER = (
    "import sys, torch\n"
    "KV_BLOCKS = [torch.zeros(256, 1024) for _ in range(4)]  # never freed\n"
    "sys.exit(3)\n"
)


@pytest.mark.parametrize("how", ["script", "module"])
def test_a_worker_command_under_the_agent_keeps_its_exit_code_and_reports(
    tmp_path: Path, how: str
) -> None:
    package = tmp_path / "engine"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "worker.py").write_text(WORKER)
    target = ["-m", "engine.worker"] if how == "module" else [str(package / "worker.py")]
    reports = tmp_path / "reports"
    done = subprocess.run(
        [sys.executable, "-m", "memdiag.agent", "--dir", str(reports), *target, "rank=1"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    (path,) = reports.iterdir()
    context = json.loads(path.read_text())["context"]
    assert path.name == f"memdiag-{context['pid']}.json"
    assert context["cmdline"].endswith(
        f"-m memdiag.agent --dir {reports} {' '.join(target)} rank=1"
    )
    assert context["rank"] is None and context["agent"] is True
    (leak,) = merge_worker_reports(reports)
    assert leak.nbytes == 4 * 256 * 1024 * 4
    assert leak.tensors[0].count == 4
    assert leak.retainers[0].chain_text().startswith("__main__.KV_BLOCKS"), leak.retainers


def test_a_wrapped_target_that_raises_does_not_report_its_locals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(memdiag.agent.ENV_DIR, raising=False)

    def failing_worker() -> None:
        import torch

        activations = torch.zeros(1024, 1024)
        raise RuntimeError(f"worker failed with {activations.shape}")

    with pytest.raises(RuntimeError, match="worker failed"):
        memdiag.agent.wrap(failing_worker, directory=tmp_path)()
    data = json.loads(memdiag.agent.report_path(tmp_path).read_text())
    assert data["leaked"] is False, data["summary"]
    assert data["context"]["written_at"] == "exit"
    assert memdiag.agent.active_agent() is None  # a later install starts afresh


def test_without_a_directory_the_agent_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memdiag.agent.ENV_DIR, raising=False)
    assert memdiag.agent.install() is None
    assert memdiag.agent.write_report() is None
    assert memdiag.agent.active_agent() is None
    done = subprocess.run(
        [sys.executable, "-m", "memdiag.agent", "script.py"],
        env={k: v for k, v in os.environ.items() if k != memdiag.agent.ENV_DIR},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "give --dir or set MEMDIAG_AGENT_DIR" in done.stderr

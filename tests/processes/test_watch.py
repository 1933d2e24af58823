"""Process tree accounting with real child processes: who is left alive, what they hold."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memdiag.agent import wrap
from memdiag.processes import proctree
from memdiag.processes import watch as watch_module
from memdiag.processes.watch import ProcessWatch, without_covered_processes
from memdiag.values.findings import Finding, FindingKind
from memdiag.values.readings import DeviceReading, ProcessUsage
from memdiag.workers.merge import merge_worker_reports
from tests.workers import mp_workers

GiB = 1024**3
SPAWN = multiprocessing.get_context("spawn")


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    """A cheap child (no torch) whose command line carries ``args``."""
    code = "import sys, time; time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code, *args])


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        child.kill()
        child.wait()


def _charged(device: str, *usage: tuple[int, int]) -> dict[str, DeviceReading]:
    """Readings as NVML gives them: the device's per-PID usage."""
    procs = tuple(ProcessUsage(pid, used, "python") for pid, used in usage)
    return {device: DeviceReading(device=device, processes=procs)}


def test_a_spawned_worker_left_alive_holding_tensors_is_found_with_its_command_line(
    tmp_path: Path,
) -> None:
    watch = ProcessWatch()
    watch.start()
    ready, stop = SPAWN.Event(), SPAWN.Event()
    worker = SPAWN.Process(
        target=wrap(mp_workers.hold_tensors, directory=tmp_path), args=(ready, stop)
    )
    worker.start()
    try:
        assert ready.wait(60), "the worker did not start"
        watch.phase_end("create")
        watch.phase_end("shutdown")  # ...which forgot to stop the worker
        assert watch.pending()
        findings = watch.findings()
        # The agent's report, written on request by the live worker, says what it holds.
        (held,) = merge_worker_reports(tmp_path)
    finally:
        stop.set()
        worker.join(60)
    (finding,) = findings  # multiprocessing's resource tracker is not a finding
    assert finding.kind is FindingKind.WORKER and finding.is_leak
    assert finding.device == "cpu"
    assert f"process {worker.pid} (`python" in finding.message
    assert "multiprocessing" in finding.message  # spawn's own command line
    assert "started during phase 'create' is still alive after shutdown" in finding.message
    assert "join" in finding.advice
    assert held.kind is FindingKind.LIVE_TENSORS
    assert held.message.startswith(f"worker {worker.pid} (`python")
    assert held.nbytes == 2 * 4 * 1024**2
    assert held.tensors[0].count == 2 and held.tensors[0].example.shape == (1024, 1024)
    # Once stopped and joined, nothing is left to report.
    assert worker.exitcode == 0
    assert not watch.pending()
    assert watch.findings() == []


def test_a_worker_alive_on_a_gpu_is_named_with_its_memory_per_device(
    children: list[subprocess.Popen[bytes]],
) -> None:
    watch = ProcessWatch()
    watch.start()
    worker = _sleeper("-m", "engine.worker", "rank=1")
    children.append(worker)
    readings = _charged("cuda:1", (worker.pid, int(70.1 * GiB)))
    watch.phase_end("load", readings)
    (finding,) = watch.findings(readings)
    assert finding.device == "cuda:1" and finding.nbytes == int(70.1 * GiB)
    assert finding.message.startswith(f"process {worker.pid} (`python")
    assert "-m engine.worker rank=1`) started during phase 'load'" in finding.message
    assert finding.message.endswith("is still alive after shutdown and holds 70.1 GiB on cuda:1")
    assert watch.usage[-1] == ("load", {worker.pid: {"cuda:1": int(70.1 * GiB)}})
    # The tracker's OTHER_PROCESS finding for the same PID is not counted twice.
    other = Finding(
        kind=FindingKind.OTHER_PROCESS,
        device="cuda:1",
        nbytes=int(70.1 * GiB),
        is_leak=True,
        message="held by other processes",
        processes=(ProcessUsage(worker.pid, int(70.1 * GiB), "python"),),
    )
    assert without_covered_processes([other], [finding]) == []


def test_memory_released_lazily_after_exit_is_a_note_with_the_delay(
    children: list[subprocess.Popen[bytes]],
) -> None:
    watch = ProcessWatch()
    watch.start()
    lazy, stuck = _sleeper("lazy"), _sleeper("stuck")
    children.extend([lazy, stuck])
    watch.phase_end("serve")
    for child in (lazy, stuck):
        child.kill()
        child.wait()
    watch.observe(_charged("cuda:0", (lazy.pid, 2 * GiB), (stuck.pid, GiB)))
    assert watch.pending()  # worth settling: the driver still charges the dead
    time.sleep(0.3)
    findings = watch.findings(_charged("cuda:0", (stuck.pid, GiB)))
    by_pid = {f.processes[0].pid: f for f in findings}
    released, leaked = by_pid[lazy.pid], by_pid[stuck.pid]
    assert not released.is_leak and released.nbytes == 2 * GiB
    assert "exited, but its memory (2.0 GiB on cuda:0) was released only after 0." in (
        released.message
    )
    assert leaked.is_leak and leaked.nbytes == GiB
    assert "exited, but 1.0 GiB on cuda:0 is still charged to it" in leaked.message
    assert watch.pending()


def test_processes_from_before_the_baseline_and_known_helpers_are_not_reported(
    children: list[subprocess.Popen[bytes]],
) -> None:
    before = _sleeper("engine-from-before")
    children.append(before)
    watch = ProcessWatch(helpers=("memdiag-test-helper",))
    watch.start()
    helper = _sleeper("memdiag-test-helper")
    children.append(helper)
    watch.phase_end("create")
    phases = {r.pid: r.phase for r in watch.processes}
    assert (phases[before.pid], phases[helper.pid]) == (None, "create")
    # Only this test's processes are judged: other children of a test worker process
    # (xdist, multiprocessing's resource tracker of an earlier test) may come and go.
    mentioned = " ".join(f.message for f in watch.findings())
    assert f"process {before.pid} " not in mentioned
    assert f"process {helper.pid} " not in mentioned
    # Neither counts as a worker the check would wait for.
    assert not {before.pid, helper.pid} & {r.pid for r in watch.started}


def test_a_clean_multiprocess_engine_passes(tmp_path: Path) -> None:
    watch = ProcessWatch()
    watch.start()
    results = SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=wrap(mp_workers.engine_worker, directory=tmp_path, rank_arg=0),
            args=(rank, results),
        )
        for rank in range(2)
    ]
    for worker in workers:
        worker.start()
    watch.phase_end("create")
    got = dict(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(60)
    watch.phase_end("shutdown")
    results.close()
    results.join_thread()
    assert got == {0: 512.0**3, 1: 4 * 512.0**3}
    assert [w.exitcode for w in workers] == [0, 0]
    assert watch.findings() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"memdiag-{w.pid}.json" for w in workers
    )
    assert [f for f in merge_worker_reports(tmp_path) if f.is_leak] == []


@pytest.mark.skipif(proctree.pid_cursor() is None, reason="needs /proc/loadavg")
def test_the_tree_is_walked_only_when_the_pid_cursor_moved(
    children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A baseline and a check with no process started in between read one number
    instead of walking ``/proc``; a child started in between is still seen."""
    walks: list[int] = []
    real_tree = watch_module.process_tree

    def counting_tree(pid: int | None = None) -> frozenset[int]:
        walks.append(pid or 0)
        return real_tree(pid)

    monkeypatch.setattr(watch_module, "process_tree", counting_tree)
    first = ProcessWatch()
    first.start()
    # A second baseline, nothing started since (the loop of a test suite): no walk.
    quiet = ProcessWatch()
    cursor = proctree.pid_cursor()
    quiet.start()
    quiet.observe()
    if proctree.pid_cursor() == cursor:  # nothing else on the machine made a PID meanwhile
        assert len(walks) <= 1
        assert quiet.findings(observed=True) == []
    children.append(_sleeper("started-after-the-baseline"))
    quiet.observe()
    assert len(walks) >= 1
    (finding,) = quiet.findings(observed=True)
    assert finding.kind is FindingKind.WORKER
    assert "started-after-the-baseline" in finding.message

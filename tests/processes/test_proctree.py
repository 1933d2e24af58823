"""Process-tree attribution, against real child and grandchild processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from memdiag.processes import proctree

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

_SLEEPER = "import time; time.sleep(30)"
_PARENT = (
    "import subprocess, sys, time\n"
    f"p = subprocess.Popen([sys.executable, '-c', {_SLEEPER!r}])\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(30)\n"
)


@dataclass
class Family:
    child: subprocess.Popen[str]
    grandchild: int


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_exec(pid: int) -> None:
    """Wait until ``pid`` shows its new command line (it is empty in the middle of exec)."""
    deadline = time.monotonic() + 10
    while "time.sleep" not in proctree.cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while proctree.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def family() -> Iterator[Family]:
    """A child process that has started a grandchild; both killed afterwards by PID."""
    child = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    try:
        _wait_exec(child.pid)
        _wait_exec(grandchild)
        yield Family(child, grandchild)
    finally:
        _kill(grandchild)
        child.kill()
        child.wait()
        child.stdout.close()


def test_tree_holds_this_process_child_and_grandchild(family: Family) -> None:
    tree = proctree.process_tree()

    assert {os.getpid(), family.child.pid, family.grandchild} <= tree
    assert os.getppid() not in tree


def test_tree_of_a_child_is_that_child_and_its_descendants(family: Family) -> None:
    assert proctree.process_tree(family.child.pid) == {family.child.pid, family.grandchild}
    assert proctree.process_tree(family.grandchild) == {family.grandchild}


def test_the_full_proc_scan_finds_the_same_tree(
    family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = proctree.process_tree(family.child.pid)
    # A kernel without /proc/PID/task/*/children: every /proc/PID/stat is read instead.
    monkeypatch.setattr(proctree, "_children", lambda pid: None)
    assert proctree.process_tree(family.child.pid) == fast == {family.child.pid, family.grandchild}


def test_cmdline_of_live_processes(family: Family) -> None:
    assert proctree.cmdline(family.grandchild) == f"{sys.executable} -c {_SLEEPER}"
    assert "subprocess.Popen" in proctree.cmdline(family.child.pid)


def test_dead_processes_are_gone(family: Family) -> None:
    assert proctree.is_alive(family.grandchild)

    _kill(family.grandchild)  # its parent sleeps on and does not reap it: a zombie
    _wait_gone(family.grandchild)
    assert not proctree.is_alive(family.grandchild)

    family.child.kill()
    family.child.wait()
    assert not proctree.is_alive(family.child.pid)
    assert proctree.cmdline(family.child.pid) == ""
    assert family.child.pid not in proctree.process_tree()


def test_cmdline_is_truncated_to_max_len(family: Family) -> None:
    text = proctree.cmdline(family.grandchild, max_len=12)

    assert len(text) == 12
    assert text.endswith("…")


def test_unknown_pids() -> None:
    unused = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1

    assert not proctree.is_alive(unused)
    assert not proctree.is_alive(0)
    assert not proctree.is_alive(-1)
    assert proctree.cmdline(unused) == ""
    assert proctree.process_tree(unused) == {unused}


def test_without_proc_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(proctree, "_PROC", tmp_path / "no-proc")

    assert proctree.process_tree() == {os.getpid()}
    assert proctree.process_tree(4242) == {4242}
    assert proctree.cmdline(os.getpid()) == ""
    assert proctree.is_alive(os.getpid())  # answered by os.kill(pid, 0)

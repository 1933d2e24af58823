"""The in-worker agent: a child process checks its own heap and leaves a JSON report.

A leak inside a worker's heap can only be explained from inside the worker: its
retainer chains live there.  The agent runs memdiag's own check in the worker (a
:class:`~memdiag.check.tracker.Tracker` from the moment it is installed to the worker's
exit) and writes ``<dir>/memdiag-<pid>.json``: ``CheckResult.to_json()`` plus the
worker's pid, command line and rank.  The parent merges these reports into its own
(:func:`memdiag.workers.merge.merge_worker_reports`).

Python runs nothing automatically at interpreter start short of ``sitecustomize``,
so a worker opts in one of three ways, all driven by ``MEMDIAG_AGENT_DIR`` (the
parent's tracker sets it for its children when asked for worker reports):

- ``memdiag.agent.install()`` at the top of the worker's entry point (a no-op when
  the variable is unset); also usable as ``multiprocessing.Pool(initializer=...)``;
- ``multiprocessing`` / ``torch.multiprocessing`` targets wrapped with
  :func:`wrap`: ``ctx.Process(target=memdiag.agent.wrap(worker_main), ...)`` or
  ``torch.multiprocessing.spawn(memdiag.agent.wrap(fn, rank_arg=0), nprocs=2)``;
- a worker started as a command: ``python -m memdiag.agent [--dir DIR] script.py
  ARGS`` or ``python -m memdiag.agent -m package.module ARGS`` (also under
  ``torchrun ... -m memdiag.agent script.py``).  The worker's exit code is its own.

The report is written when the wrapped target or the script returns, else at
interpreter exit (``atexit``, and multiprocessing's own exit hook, which runs where
``atexit`` does not: forked children end with ``os._exit``), or whenever the worker
calls :func:`write_report`.  A worker killed by a signal writes nothing.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from memdiag.check.tracker import Tracker
from memdiag.processes.distributed import current_rank, rank_info
from memdiag.processes.proctree import cmdline as proc_cmdline
from memdiag.report.json_report import write_json
from memdiag.values.result import CheckResult
from memdiag.values.units import parse_seconds
from memdiag.workers.env import ENV_DEVICE, ENV_DIR, ENV_SETTLE, report_path
from memdiag.workers.runner import TargetError, run_target, split_command_line

__all__ = [
    "ENV_DEVICE",
    "ENV_DIR",
    "ENV_SETTLE",
    "Agent",
    "active_agent",
    "install",
    "main",
    "report_path",
    "wrap",
    "write_report",
]

R = TypeVar("R")


class Agent:
    """The agent of this process: its tracker, and where its report goes."""

    def __init__(
        self,
        directory: Path,
        *,
        device: str = "auto",
        settle: float | None = None,
        rank: int | None = None,
    ) -> None:
        self.directory = directory
        self.pid = os.getpid()
        self.rank = rank
        self.cmdline = proc_cmdline(self.pid, max_len=1024) or " ".join(sys.argv)
        options: dict[str, Any] = {"device": device, "name": f"worker {self.pid}"}
        if settle is not None:
            options["settle"] = settle
        self.tracker = Tracker(**options)
        self.result: CheckResult | None = None
        self._lock = threading.Lock()
        self._done = False

    @property
    def path(self) -> Path:
        return report_path(self.directory, self.pid)

    def start(self) -> Agent:
        self.tracker.start()
        return self

    def write_report(self, *, final: bool = False) -> Path | None:
        """Check now and write the report; ``final`` also stops the tracker.

        Returns the report's path, or ``None`` when the final report was already
        written (or this object was inherited through ``fork`` by another process).
        """
        with self._lock:
            if self._done or os.getpid() != self.pid:
                return None
            result = self.tracker.check()
            if final:
                self._done = True
                self.tracker.close()
                _forget(self)
            self.result = result
            self._write(result, when="exit" if final else "request")
            return self.path

    def _write(self, result: CheckResult, *, when: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        info = rank_info()
        rank = self.rank if self.rank is not None else current_rank()
        write_json(
            result,
            self.path,
            agent=True,
            cmdline=self.cmdline,
            ppid=os.getppid(),
            rank=rank,
            world_size=info.world_size if info else None,
            local_rank=info.local_rank if info else None,
            written_at=when,
        )

    def _at_exit(self) -> None:
        try:
            self.write_report(final=True)
        except Exception:  # noqa: BLE001 - a failing agent must not change the exit
            print("memdiag agent: the worker's report failed:", file=sys.stderr)
            traceback.print_exc()


_AGENT: Agent | None = None
_INSTALL_LOCK = threading.Lock()


def _forget(agent: Agent) -> None:
    """After the final report, a later :func:`install` starts a fresh agent."""
    global _AGENT
    if _AGENT is agent:
        _AGENT = None


def active_agent() -> Agent | None:
    """This process' agent, or ``None`` (an agent inherited through ``fork`` is not)."""
    agent = _AGENT
    return agent if agent is not None and agent.pid == os.getpid() else None


def install(
    directory: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    settle: float | None = None,
    rank: int | None = None,
) -> Agent | None:
    """Start this process' agent: the baseline is now, the report comes at exit.

    ``directory`` defaults to ``$MEMDIAG_AGENT_DIR``; without either this is a no-op
    that returns ``None``, so workers may call it unconditionally.  Installing twice
    returns the running agent.  ``rank`` labels the report where no launcher set
    ``RANK`` (``torch.multiprocessing.spawn`` passes it as the first argument).
    """
    global _AGENT
    target = directory if directory is not None else os.environ.get(ENV_DIR)
    if not target:
        return None
    with _INSTALL_LOCK:
        running = active_agent()
        if running is not None:
            if rank is not None and running.rank is None:
                running.rank = rank
            return running
        env_settle = os.environ.get(ENV_SETTLE)
        agent = Agent(
            Path(target),
            device=device or os.environ.get(ENV_DEVICE) or "auto",
            settle=settle if settle is not None else _env_seconds(env_settle),
            rank=rank,
        ).start()
        _AGENT = agent
    atexit.register(agent._at_exit)
    # Children of fork/forkserver end with os._exit (no atexit); they all run
    # multiprocessing's exit function, which runs finalizers with a priority.
    from multiprocessing import util

    util.Finalize(None, agent._at_exit, exitpriority=100)
    return agent


def write_report() -> Path | None:
    """Write this process' report now (the worker asks, e.g. in its shutdown handler).

    The tracker keeps running; the report at exit replaces this one.  ``None`` when
    no agent is installed.
    """
    agent = active_agent()
    return agent.write_report() if agent is not None else None


class _Wrapped(Generic[R]):
    """A picklable target that runs ``target`` under the agent (see :func:`wrap`)."""

    def __init__(
        self, target: Callable[..., R], directory: str | None, rank_arg: int | None
    ) -> None:
        self.target = target
        self.directory = directory
        self.rank_arg = rank_arg

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        rank = None
        if self.rank_arg is not None and len(args) > self.rank_arg:
            value = args[self.rank_arg]
            rank = value if isinstance(value, int) else None
        outer = active_agent()  # an agent already running here keeps running after us
        agent = install(self.directory, rank=rank)
        try:
            return self.target(*args, **kwargs)
        except BaseException as exc:
            # The traceback would keep the target's locals alive through the check.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            if agent is not None and agent is not outer:
                agent._at_exit()

    def __repr__(self) -> str:
        return f"memdiag.agent.wrap({self.target!r})"


def wrap(
    target: Callable[..., R],
    *,
    directory: str | os.PathLike[str] | None = None,
    rank_arg: int | None = None,
) -> Callable[..., R]:
    """``target`` run under the agent: installed before it starts, report when it returns.

    Picklable whenever ``target`` is, so it works as a ``spawn`` / ``forkserver``
    target and with ``torch.multiprocessing.spawn``.  ``directory`` defaults to the
    child's ``$MEMDIAG_AGENT_DIR`` (inherited from the parent); ``rank_arg``: index of
    the positional argument that holds the rank (``0`` for ``torch.multiprocessing.spawn``).
    """
    return _Wrapped(target, None if directory is None else os.fspath(directory), rank_arg)


# -- python -m memdiag.agent ---------------------------------------------------------------


def _env_seconds(text: str | None) -> float | None:
    """``$MEMDIAG_AGENT_SETTLE`` as seconds; a bad value (``nan``, ``inf``) is ignored
    with a warning on stderr: a worker is never stopped by its parent's typo."""
    if not text:
        return None
    try:
        return parse_seconds(text, what=f"${ENV_SETTLE}")
    except ValueError as exc:
        print(f"memdiag agent: {exc}; using the default", file=sys.stderr)
        return None


def _settle_seconds(text: str) -> float:
    try:
        return parse_seconds(text, what="--settle")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m memdiag.agent",
        usage="python -m memdiag.agent [options] (script.py | -m module | -c code) [args ...]",
        description=(
            "Run a worker program as python would (the same runner as `memdiag run`), then "
            "write its memdiag report to DIR/memdiag-PID.json.  Exits with the worker's "
            "own exit code."
        ),
    )
    parser.add_argument("--dir", help=f"report directory (default: ${ENV_DIR})")
    parser.add_argument("--device", help=f"device to check (default: ${ENV_DEVICE} or auto)")
    parser.add_argument("--settle", type=_settle_seconds, help="seconds to let memory come back")
    parser.add_argument("-m", dest="module", help="run a module, as python -m does")
    parser.add_argument("-c", dest="code", help="run code, as python -c does")
    parser.add_argument("script", nargs="?", help="the worker script")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, `--` included")
    return parser


def _report_at_os_exit(agent: Agent) -> Callable[[int, str], int]:
    """A worker ending with ``os._exit`` writes its report first (frames still alive)."""

    def report(code: int, where: str) -> int:
        agent._at_exit()
        return code

    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m memdiag.agent [--dir DIR] (script.py | -m module | -c code) [args...]``."""

    parser = _parser()
    own, target, program_args = split_command_line(
        list(sys.argv[1:] if argv is None else argv), parser
    )
    args = parser.parse_args(own)
    if target is None:
        parser.error("give a script to run, -m module or -c code")
    directory = args.dir or os.environ.get(ENV_DIR)
    if not directory:
        parser.error(f"give --dir or set {ENV_DIR}")
    os.environ[ENV_DIR] = directory  # the worker's own children report there too
    agent = install(directory, device=args.device, settle=args.settle)
    assert agent is not None
    try:
        run = run_target(target, program_args, on_os_exit=_report_at_os_exit(agent))
    except TargetError as exc:
        print(f"memdiag agent: {exc}", file=sys.stderr)
        return 2
    if run.forked:  # a child the worker forked: its report is its own agent's business
        return run.exit_code
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        agent._at_exit()  # with the worker's __main__ still alive, as `memdiag run`
    finally:
        run.release()
    return run.exit_code


if __name__ == "__main__":
    # Run through the imported module so that the script's own `memdiag.agent`
    # calls reach the same (single) agent.
    from memdiag.agent import main as _main

    sys.exit(_main())

"""Run a Python program under a tracker and check that device memory came back."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from memdiag.backends.registry import UsageError
from memdiag.check.interpreter import InterpreterState
from memdiag.check.signals import (
    block_program_signals,
    deferred_signals,
    ignore_at_exit,
    pending_signals,
)
from memdiag.check.tracker import Tracker
from memdiag.cli.errors import (
    EXIT_INTERNAL,
    EXIT_LEAK,
    EXIT_OK,
    EXIT_SCRIPT_FAILED,
    CliError,
    internal_error,
    say,
)
from memdiag.cli.known import read_known
from memdiag.cli.options import (
    add_check_options,
    check_output_paths,
    emit_annotations,
    tolerances_from,
    write_reports,
)
from memdiag.cli.stdio import OriginalStdio
from memdiag.processes.distributed import RankInfo, rank_info, rank_json_path
from memdiag.report.console import plain_console
from memdiag.report.json_report import write_json
from memdiag.report.known import KnownLeaks, apply_known, script_unit
from memdiag.report.progress import status
from memdiag.report.terminal import render_terminal
from memdiag.values.result import CheckResult
from memdiag.values.units import plural
from memdiag.workers.runner import ScriptRun, Target, TargetError, run_target, split_command_line

__all__ = ["COMMAND"]


class RunCommand:
    """Run a program as python would, then check device memory came back.

      memdiag run [options] script.py [args...]     as `python script.py args`
      memdiag run [options] -m package.module [args...]   as `python -m`
      memdiag run [options] -c "code" [args...]     as `python -c`

    The program gets sys.argv, sys.path[0] and __main__ exactly as python gives
    them; everything after the script (or -m module, -c code) is its own, `--`
    included.  The baseline is taken before it starts; the final check runs when
    it returns, with its __main__ namespace still alive, after gc.collect().
    Mark phases in the program with memdiag.phase("create") etc.

    Reports: --json (documented schema), --html (self-contained, with a memory
    timeline), --junit (a test case per device); in GitHub Actions, annotations
    point at the leak's allocation site or its retainer's definition.  Report
    paths are relative to the directory memdiag started in, whatever the program
    does with its working directory.

    Under torchrun (RANK/WORLD_SIZE set) every rank checks itself and writes its own
    reports (out.json -> out.rank1.json); `memdiag merge` combines them.

    Exit codes: 0 no leak (memory within tolerance); 1 leak (also when the program
    failed); 2 usage error; 3 the program failed (exception, sys.exit with a non-zero
    code or text) but memory was within tolerance; 4 memdiag's own internal error.
    """

    name = "run"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.usage = "memdiag run [options] (script.py | -m module | -c code | -) [args ...]"
        add_check_options(parser)
        parser.add_argument(
            "--known",
            metavar="FILE",
            help="known-leaks file (memdiag known update): leaks it lists are reported, not "
            "failed, unless they grew beyond their recorded bytes",
        )
        parser.add_argument(
            "-m",
            dest="module",
            metavar="MODULE",
            help="run a module as `python -m` does (ends memdiag's options)",
        )
        parser.add_argument(
            "-c",
            dest="code",
            metavar="CODE",
            help="run code as `python -c` does (ends memdiag's options)",
        )
        parser.add_argument(
            "script", nargs="?", help="the script to run (a directory or zip with __main__.py)"
        )
        parser.add_argument(
            "args", nargs=argparse.REMAINDER, help="the program's arguments, `--` included"
        )

    def split_argv(
        self, argv: list[str], parser: argparse.ArgumentParser
    ) -> tuple[list[str], dict[str, Any]]:
        """memdiag's options for argparse; the program and its arguments untouched."""
        own, target, program_args = split_command_line(argv, parser)
        return own, {"target": target, "args": program_args}

    def run(self, args: argparse.Namespace) -> int:
        target: Target | None = getattr(args, "target", None)
        if target is None:
            raise CliError(
                "memdiag run: give a script, -m module or -c code to run (see memdiag run --help)"
            )
        if args.settle < 0:
            raise CliError(f"--settle must be 0 or more seconds, not {args.settle}")
        tolerance = tolerances_from(args.tolerance)
        rank = rank_info()
        if rank is not None:
            for option in ("json", "html", "junit"):
                if getattr(args, option, None):
                    setattr(args, option, str(rank_json_path(getattr(args, option), rank)))
        check_output_paths(args)  # and made absolute: the program may chdir
        known = read_known(args.known) if args.known else None
        stdio: OriginalStdio = getattr(args, "stdio", None) or OriginalStdio()
        try:
            tracker = Tracker(
                device=args.device,
                tolerance=tolerance,
                settle=args.settle,
                analyze=not args.no_analysis,
                record_alloc_stacks=args.alloc_stacks,
                worker_reports=args.worker_reports,
                name=target.display,
            )
            tracker.start()
        except UsageError as exc:
            raise CliError(str(exc)) from None
        session = _Session(args, target, tracker, stdio, rank, known)
        try:
            script_run = run_target(
                target,
                list(args.args),
                on_os_exit=session.on_os_exit,
                stderr=stdio.stderr,
                on_return=session.program_returned,
            )
        except TargetError as exc:
            tracker.close()
            raise CliError(str(exc)) from None
        except BaseException:
            tracker.close()
            raise
        if script_run.forked:
            # A child the program forked (os.fork) came back here: the check belongs
            # to the process memdiag started.  The child ends as python would end it.
            return script_run.exit_code
        return session.finish(script_run)


class _Session:
    """One `memdiag run`: the check after the program, and the reports."""

    def __init__(
        self,
        args: argparse.Namespace,
        target: Target,
        tracker: Tracker,
        stdio: OriginalStdio,
        rank: RankInfo | None,
        known: KnownLeaks | None = None,
    ) -> None:
        self.known = known
        self.args = args
        self.target = target
        self.tracker = tracker
        self.stdio = stdio
        self.rank = rank
        self.pid = os.getpid()
        self.interpreter = InterpreterState().restored()
        """Entered when the program returns, left after the reports: the program may
        have replaced builtins, stdlib functions, sys.modules entries, the recursion
        limit, hooks; memdiag runs in the interpreter it found, the program's
        atexit handlers in the one the program left."""
        self.held: frozenset[int] = frozenset()

    def program_returned(self) -> None:
        """The program's code is done (called again if a signal handler of the
        program raised into it: each step resumes).  The interpreter is put back
        (builtins first, with statements only), and the signals the program handles
        in Python are held from here to the process' end (a timer whose handler
        raises must not fire into the check or the reports)."""
        self.interpreter.__enter__()
        self.held |= block_program_signals()

    def _leave(self) -> None:
        """The reports are written: the program's own interpreter state is back."""
        self.interpreter.__exit__(None, None, None)

    def _held_note(self) -> None:
        arrived = pending_signals(self.held)
        ignore_at_exit(arrived)
        for signum in arrived:
            say(
                self.stdio,
                f"memdiag: {signal.Signals(signum).name} arrived after the script ended; "
                "it was held, and the script's handler was not run",
            )

    def finish(self, script_run: ScriptRun) -> int:
        """The program returned: check with its ``__main__`` alive, then report."""
        self.program_returned()  # done already, unless a signal handler kept raising
        _flush_program_output()
        try:
            result = self._check()
        finally:
            script_run.release()
            self.tracker.close()
        code = self.report(result, script_run.exit_code, script_run.failure)
        self._held_note()
        self._leave()  # not on an error: memdiag's message is written in this state
        return code

    def on_os_exit(self, code: int, where: str) -> int:
        """The program called ``os._exit``: check now, before the process is gone."""
        self.program_returned()
        failure = f"the script called os._exit({code})" if code else None
        notice = (
            f"the script called os._exit({code}) at {where}: the process ends there, "
            "without atexit handlers, finalizers or interpreter shutdown, so memdiag "
            "checked at that call, with the calling frames still alive (memory their "
            "locals hold counts); nothing after it can be checked"
        )
        try:
            try:
                result = self._check()
            finally:
                self.tracker.close()
            return self.report(result, code, failure, notices=(notice,))
        except CliError as exc:
            say(self.stdio, f"memdiag: {exc}")
            return exc.exit_code
        except Exception as exc:  # noqa: BLE001 - the process ends right after this
            internal_error(self.stdio, exc)
            return EXIT_INTERNAL

    def _check(self) -> CheckResult:
        gc.collect()
        message = f"memdiag: checking device memory (settle up to {self.args.settle:g} s)"
        # The program has ended: a signal its handlers would raise on (an alarm it set)
        # must not interrupt the check; it is held and reported, not delivered.
        with deferred_signals(redeliver=False) as held:
            with status(message, stream=self.stdio.stderr()):
                result = self.tracker.check()
        for signum in held:
            say(
                self.stdio,
                f"memdiag: {signal.Signals(signum).name} arrived after the script ended, "
                "during the check; the script's handler was not run",
            )
        return result

    def report(
        self,
        result: CheckResult,
        exit_code: int,
        failure: str | None,
        *,
        notices: tuple[str, ...] = (),
    ) -> int:
        args, target, rank = self.args, self.target, self.rank
        result = apply_known(result, self.known, test=script_unit(target.display))
        if any("__main__." in g.chain_text() for f in result.findings for g in f.retainers):
            notices = (*notices, f"`__main__` in the chains is {target.display}")
        if notices:
            result = dataclasses.replace(result, notices=(*result.notices, *notices))
        err = self.stdio.stderr()
        console = plain_console(err)
        if rank is not None:
            console.print(f"memdiag: rank {rank.rank} of {rank.world_size} (pid {self.pid})")
        render_terminal(result, console, verbosity=args.verbose)
        if exit_code != 0:
            console.print(f"script failed: {failure} (exit code {exit_code})")
        if args.json:
            try:
                write_json(
                    result,
                    args.json,
                    script=target.display,
                    script_exit_code=exit_code,
                    **(rank.to_json() if rank is not None else {}),
                )
            except OSError as exc:
                raise CliError(f"cannot write --json {args.json}: {exc.strerror}") from None
        write_reports(result, args, name=target.display)
        main_file = target.value if target.kind == "script" else None
        emit_annotations(
            result, main_file=main_file, verbosity=args.verbose, file=self.stdio.stdout()
        )
        console.file.flush()
        err.flush()
        code = EXIT_LEAK if result.leaked else (EXIT_SCRIPT_FAILED if exit_code else EXIT_OK)
        if code != EXIT_OK and rank is not None and args.json:
            _wait_for_other_ranks(args.json, rank, console)
        return code


def _flush_program_output() -> None:
    """What the program printed comes before the report (as python flushes at exit)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # closed by the program: its output is lost, as under python


RANK_WAIT_S = 120.0


def _wait_for_other_ranks(json_path: str, rank: RankInfo, console: Console) -> None:
    """Launchers (torchrun) stop every rank when one exits non-zero: a rank that
    leaked waits for its siblings' reports first, so `memdiag merge` sees them all."""
    own = Path(json_path)
    stem = own.name.replace(f".rank{rank.rank}", ".rank{}")
    others = [own.with_name(stem.format(r)) for r in range(rank.world_size) if r != rank.rank]
    missing = [p for p in others if not p.exists()]
    if not missing:
        return
    console.print(
        f"memdiag: rank {rank.rank} waits up to {RANK_WAIT_S:.0f} s for "
        f"{plural(len(missing), 'other rank report')} before exiting "
        "(a launcher stops every rank once one fails)"
    )
    deadline = time.monotonic() + RANK_WAIT_S
    while missing and time.monotonic() < deadline:
        time.sleep(0.2)
        missing = [p for p in missing if not p.exists()]


COMMAND = RunCommand()

"""Run a Python script under a tracker and check that device memory came back."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import signal
import sys
import time
from pathlib import Path

from rich.console import Console

from memdiag.backends.registry import UsageError
from memdiag.check.signals import deferred_signals
from memdiag.check.tracker import Tracker
from memdiag.cli.errors import EXIT_LEAK, EXIT_OK, EXIT_SCRIPT_FAILED, CliError
from memdiag.cli.known import read_known
from memdiag.cli.options import (
    add_check_options,
    check_output_paths,
    emit_annotations,
    tolerances_from,
    write_reports,
)
from memdiag.processes.distributed import RankInfo, rank_info, rank_json_path
from memdiag.report.console import plain_console
from memdiag.report.json_report import write_json
from memdiag.report.known import apply_known, script_unit
from memdiag.report.progress import status
from memdiag.report.terminal import render_terminal
from memdiag.values.units import plural
from memdiag.workers.runner import ScriptNotFound, run_script

__all__ = ["COMMAND"]


class RunCommand:
    """Run SCRIPT as `python SCRIPT ARGS` would, then check device memory came back.

    The baseline is taken before the script starts; the final check runs when the
    script returns, with its __main__ namespace still alive, after gc.collect().
    Mark phases in the script with memdiag.phase("create") etc.

    Reports: --json (documented schema), --html (self-contained, with a memory
    timeline), --junit (a test case per device); in GitHub Actions, annotations
    point at the leak's allocation site or its retainer's definition.

    Under torchrun (RANK/WORLD_SIZE set) every rank checks itself and writes its own
    reports (out.json -> out.rank1.json); `memdiag merge` combines them.

    Exit codes: 0 memory came back; 1 leak (also when the script failed);
    2 usage error; 3 the script failed (exception or non-zero exit) but memory came
    back; 4 memdiag's own internal error.
    """

    name = "run"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_check_options(parser)
        parser.add_argument(
            "--known",
            metavar="FILE",
            help="known-leaks file (memdiag known update): leaks it lists are reported, not "
            "failed, unless they grew beyond their recorded bytes",
        )
        parser.add_argument("script", help="the Python script to run")
        parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")

    def run(self, args: argparse.Namespace) -> int:
        if args.settle < 0:
            raise CliError(f"--settle must be 0 or more seconds, not {args.settle}")
        tolerance = tolerances_from(args.tolerance)
        rank = rank_info()
        if rank is not None:
            for option in ("json", "html", "junit"):
                if getattr(args, option, None):
                    setattr(args, option, str(rank_json_path(getattr(args, option), rank)))
        check_output_paths(args)
        known = read_known(args.known) if args.known else None
        try:
            tracker = Tracker(
                device=args.device,
                tolerance=tolerance,
                settle=args.settle,
                analyze=not args.no_analysis,
                record_alloc_stacks=args.alloc_stacks,
                worker_reports=args.worker_reports,
                name=args.script,
            )
            tracker.start()
        except UsageError as exc:
            raise CliError(str(exc)) from None
        console = plain_console(stderr=True)
        script_run = None
        try:
            try:
                script_run = run_script(args.script, list(args.args))
            except ScriptNotFound as exc:
                raise CliError(str(exc)) from None
            sys.stdout.flush()
            # The script has ended: a signal its handlers would raise on (an alarm it
            # set) must not interrupt the check; it is held and reported, not delivered.
            with deferred_signals(redeliver=False) as held:
                gc.collect()
                with status(f"memdiag: checking device memory (settle up to {args.settle:g} s)"):
                    result = tracker.check()
            for signum in held:
                console.print(
                    f"memdiag: {signal.Signals(signum).name} arrived after the script ended, "
                    "during the check; the script's handler was not run"
                )
        finally:
            if script_run is not None:
                script_run.release()
            tracker.close()
        result = apply_known(result, known, test=script_unit(args.script))
        if any(
            "__main__." in str(g.get("chain_text", ""))
            for f in result.findings
            for g in f.retainers
        ):
            result = dataclasses.replace(
                result, notices=(*result.notices, f"`__main__` in the chains is {args.script}")
            )
        if rank is not None:
            console.print(f"memdiag: rank {rank.rank} of {rank.world_size} (pid {os.getpid()})")
        render_terminal(result, console, verbosity=args.verbose)
        if script_run.failed:
            console.print(f"script failed: {script_run.failure} (exit code {script_run.exit_code})")
        if args.json:
            try:
                write_json(
                    result,
                    args.json,
                    script=str(args.script),
                    script_exit_code=script_run.exit_code,
                    **(rank.to_json() if rank is not None else {}),
                )
            except OSError as exc:
                raise CliError(f"cannot write --json {args.json}: {exc.strerror}") from None
        write_reports(result, args, name=str(args.script))
        emit_annotations(result, main_file=str(args.script), verbosity=args.verbose)
        code = (
            EXIT_LEAK if result.leaked else (EXIT_SCRIPT_FAILED if script_run.failed else EXIT_OK)
        )
        if code != EXIT_OK and rank is not None and args.json:
            _wait_for_other_ranks(args.json, rank, console)
        return code


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

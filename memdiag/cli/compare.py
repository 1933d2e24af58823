"""Compare two JSON reports, base and head: the gate for an engine PR."""

from __future__ import annotations

import argparse
import sys

from memdiag.cli.errors import EXIT_LEAK, EXIT_OK, CliError
from memdiag.cli.known import read_known
from memdiag.cli.options import add_markdown_option, write_markdown
from memdiag.cli.report import RunReport, read_any
from memdiag.report.compare import compare
from memdiag.report.console import plain_console
from memdiag.report.gate import compare_sessions
from memdiag.report.github import gate_annotations, in_github_actions, print_annotations
from memdiag.report.known import apply_known, script_unit
from memdiag.report.markdown import comparison_markdown, gate_markdown
from memdiag.report.session import SessionReport
from memdiag.values.units import parse_size

__all__ = ["COMMAND"]

_PEAK_TOLERANCE = 1024**2
_PEAK_PERCENT = 10.0


def _percent(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage such as 10") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage must lie between 0 and 10000")
    return value


def _size(flag: str, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


class CompareCommand:
    """Fail when HEAD's memory regressed against BASE, beyond a tolerance.

    Pytest session reports (`pytest --gpu-leak-check --gpu-leak-json`, or
    `memdiag merge --json` of shards), per test: a new leak, a leak that grew, a
    known leak beyond its recorded size, or a peak that grew beyond both
    --peak-tolerance and --peak-tolerance-pct of the base peak (net of what the test
    still holds at its end) is a regression.  Leaks base already had, known leaks
    within their size and tests that stopped leaking are reported, never failed.
    The table lists regressions first, biggest first.

    `memdiag run --json` reports, per device: the bytes each run leaked and its
    peak allocated bytes; worse beyond --tolerance fails.

    --known FILE re-judges head's leaks against a known-leaks file (`memdiag known
    update`); --markdown OUT writes the summary for the PR page (also appended to
    $GITHUB_STEP_SUMMARY when set); in GitHub Actions each regression is also an
    annotation on its test file.

    Exit codes: 0 no regression; 1 a regression; 2 usage error (missing file, not a
    report, a session report against a run report, bad tolerance).
    """

    name = "compare"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("base", help="JSON report of the base run")
        parser.add_argument("head", help="JSON report of the head (PR) run")
        parser.add_argument(
            "--tolerance",
            default="1MiB",
            metavar="SIZE",
            help="growth of leaked bytes that is noise (default 1MiB; for run reports "
            "also of peak bytes)",
        )
        parser.add_argument(
            "--peak-tolerance",
            metavar="SIZE",
            help="growth of a test's peak that is noise (default 1MiB; run reports: --tolerance)",
        )
        parser.add_argument(
            "--peak-tolerance-pct",
            type=_percent,
            metavar="PCT",
            help="growth of a test's peak, in percent of its base peak, that is noise; a "
            f"peak regresses beyond both (default {_PEAK_PERCENT:g}; run reports: 0)",
        )
        parser.add_argument(
            "--known", metavar="FILE", help="known-leaks file to judge head's leaks by"
        )
        add_markdown_option(parser)
        parser.add_argument("-v", "--verbose", action="count", default=0, help="show more detail")

    def run(self, args: argparse.Namespace) -> int:
        tolerance = _size("--tolerance", args.tolerance)
        peak_tolerance = (
            None if args.peak_tolerance is None else _size("--peak-tolerance", args.peak_tolerance)
        )
        known = read_known(args.known) if args.known else None
        base, head = read_any(args.base), read_any(args.head)
        console = plain_console()
        if isinstance(base, SessionReport) and isinstance(head, SessionReport):
            gate = compare_sessions(
                base,
                head,
                tolerance=tolerance,
                peak_tolerance=_PEAK_TOLERANCE if peak_tolerance is None else peak_tolerance,
                peak_percent=_PEAK_PERCENT
                if args.peak_tolerance_pct is None
                else args.peak_tolerance_pct,
                known=known,
            )
            gate.render_to(console, verbosity=args.verbose)
            write_markdown(gate_markdown(gate), args)
            if in_github_actions():
                print_annotations(gate_annotations(gate), sys.stdout)
                sys.stdout.flush()
            return EXIT_LEAK if gate.failed else EXIT_OK
        if isinstance(base, RunReport) and isinstance(head, RunReport):
            head_result = head.result
            if known is not None:
                head_result = apply_known(head_result, known, test=script_unit(head.script))
            comparison = compare(
                base.result,
                head_result,
                tolerance=tolerance,
                peak_tolerance=peak_tolerance,
                peak_percent=args.peak_tolerance_pct or 0.0,
            )
            comparison.render_to(console)
            write_markdown(comparison_markdown(comparison), args)
            return EXIT_LEAK if comparison.worse else EXIT_OK
        kinds = [
            "a pytest session" if isinstance(r, SessionReport) else "a `memdiag run`"
            for r in (base, head)
        ]
        raise CliError(
            f"cannot compare {kinds[0]} report ({args.base}) with {kinds[1]} report "
            f"({args.head}); compare reports of the same kind"
        )


COMMAND = CompareCommand()

"""Compare two JSON reports of the same program: the gate for an engine PR."""

from __future__ import annotations

import argparse

from rich.console import Console

from memdiag.cli.errors import EXIT_LEAK, EXIT_OK, CliError
from memdiag.cli.report import read_report
from memdiag.report.compare import compare
from memdiag.values.units import parse_size

__all__ = ["COMMAND"]


class CompareCommand:
    """Fail when HEAD leaks more or peaks higher than BASE, beyond a tolerance.

    Run the same check on the base branch and on the PR branch, each with
    `memdiag run --json`, then `memdiag compare base.json head.json`.  Prints per
    device the bytes each run leaked (findings over its tolerance) and its peak
    allocated bytes.

    Exit codes: 0 head is not worse; 1 head is worse on some device; 2 usage error
    (missing file, not a report, unsupported schema_version, bad tolerance).
    """

    name = "compare"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("base", help="JSON report of the base run")
        parser.add_argument("head", help="JSON report of the head (PR) run")
        parser.add_argument(
            "--tolerance",
            default="1MiB",
            metavar="SIZE",
            help="growth of leaked or peak bytes that is noise (default 1MiB)",
        )

    def run(self, args: argparse.Namespace) -> int:
        try:
            tolerance = parse_size(args.tolerance)
        except ValueError as exc:
            raise CliError(f"--tolerance: {exc}") from None
        base, _ = read_report(args.base)
        head, _ = read_report(args.head)
        comparison = compare(base, head, tolerance=tolerance)
        comparison.render_to(Console(highlight=False))
        return EXIT_LEAK if comparison.worse else EXIT_OK


COMMAND = CompareCommand()

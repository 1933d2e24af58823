"""Re-render a JSON report written by --json on the terminal."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from memdiag.cli.errors import EXIT_LEAK, EXIT_OK, CliError
from memdiag.report.json_report import load_json
from memdiag.report.terminal import render_terminal

__all__ = ["COMMAND"]


class ReportCommand:
    """Show a JSON report (from `memdiag run --json`) on the terminal; exit 1 if it leaked."""

    name = "report"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", help="a report written by --json")
        parser.add_argument("-v", "--verbose", action="count", default=0)

    def run(self, args: argparse.Namespace) -> int:
        try:
            result = load_json(args.file)
        except FileNotFoundError:
            raise CliError(f"report not found: {args.file}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CliError(f"{args.file} is not a memdiag JSON report: {exc}") from None
        render_terminal(result, Console(highlight=False), verbosity=args.verbose)
        return EXIT_LEAK if result.leaked else EXIT_OK


COMMAND = ReportCommand()

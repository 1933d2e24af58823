"""Re-render a JSON report written by --json on the terminal, as HTML or as JUnit XML."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from memdiag.cli.errors import EXIT_LEAK, EXIT_OK, CliError
from memdiag.cli.options import add_report_options, emit_annotations, write_reports
from memdiag.report.json_report import load_report
from memdiag.report.terminal import render_terminal
from memdiag.values.result import CheckResult

__all__ = ["COMMAND", "read_report"]


def read_report(path: str) -> tuple[CheckResult, dict[str, object]]:
    """Load a JSON report, or raise the usage error (exit 2) that says what is wrong."""
    try:
        return load_report(path)
    except FileNotFoundError:
        raise CliError(f"report not found: {path}") from None
    except IsADirectoryError:
        raise CliError(f"{path} is a directory, not a JSON report") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CliError(f"{path} is not a memdiag JSON report: {exc}") from None


class ReportCommand:
    """Show a JSON report (from `memdiag run --json`) on the terminal; exit 1 if it leaked.

    --html OUT and --junit OUT write the same report in those forms instead of or as
    well as the terminal one (use -q to skip the terminal).  In GitHub Actions the
    leaks are also printed as annotations.
    """

    name = "report"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", help="a report written by --json")
        add_report_options(parser)
        parser.add_argument(
            "-q", "--quiet", action="store_true", help="do not print the terminal report"
        )
        parser.add_argument("-v", "--verbose", action="count", default=0, help="show more detail")

    def run(self, args: argparse.Namespace) -> int:
        result, context = read_report(args.file)
        script = context.get("script")
        name = script if isinstance(script, str) else ""
        if not args.quiet:
            render_terminal(result, Console(highlight=False), verbosity=args.verbose)
        write_reports(result, args, name=name)
        emit_annotations(result, main_file=name or None, verbosity=args.verbose)
        return EXIT_LEAK if result.leaked else EXIT_OK


COMMAND = ReportCommand()

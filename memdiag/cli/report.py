"""Re-render a JSON report: a `memdiag run --json` report on the terminal, as HTML,
JUnit XML or Markdown; a pytest session report (`--gpu-leak-json`) on the terminal
or as Markdown."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from memdiag.cli.errors import EXIT_LEAK, EXIT_OK, CliError
from memdiag.cli.options import (
    add_markdown_option,
    add_report_options,
    emit_annotations,
    write_markdown,
    write_reports,
)
from memdiag.report.console import plain_console
from memdiag.report.github import in_github_actions, print_annotations, session_annotations
from memdiag.report.markdown import run_markdown, session_markdown
from memdiag.report.session import SessionReport, is_session_data
from memdiag.report.session_terminal import render_session
from memdiag.report.terminal import render_terminal
from memdiag.values.result import CheckResult
from memdiag.values.validate import ReportFormatError, read_report_data, result_from_data

__all__ = ["COMMAND", "RunReport", "read_any", "read_report"]


@dataclass(frozen=True)
class RunReport:
    """A `memdiag run` report: the result and who wrote it."""

    result: CheckResult
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def script(self) -> str:
        script = self.context.get("script")
        return script if isinstance(script, str) else ""


def read_any(path: str) -> RunReport | SessionReport:
    """A run or a pytest session report, or the usage error (exit 2) that says why not.

    Every report memdiag reads (report, merge, compare, known) comes through here: the
    file is checked against the shipped schema first, so a hand-edited, truncated or
    mangled report is a message naming the file and the field, never a traceback."""
    try:
        data = read_report_data(path)
    except FileNotFoundError:
        raise CliError(f"report not found: {path}") from None
    except IsADirectoryError:
        raise CliError(f"{path} is a directory, not a JSON report") from None
    except ReportFormatError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if is_session_data(data):
            return SessionReport.from_json(data)
        context = data.get("context")
        return RunReport(
            result_from_data(data, path), dict(context) if isinstance(context, dict) else {}
        )
    except ReportFormatError as exc:
        raise CliError(str(exc)) from None
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        ArithmeticError,
        RecursionError,
    ) as exc:  # what the schema cannot rule out (memdiag 0.1's session reports)
        raise CliError(
            f"{path} is not a memdiag JSON report: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def read_report(path: str) -> tuple[CheckResult, dict[str, object]]:
    """A `memdiag run` report, or the usage error (exit 2) that says what is wrong."""
    report = read_any(path)
    if isinstance(report, SessionReport):
        raise CliError(f"{path} is a pytest session report; this needs a `memdiag run` report")
    return report.result, report.context


class ReportCommand:
    """Show a JSON report on the terminal; exit 1 if it leaked.

    FILE is a `memdiag run --json` report or a pytest session report
    (`pytest --gpu-leak-check --gpu-leak-json FILE`, or `memdiag merge --json` of
    several).  For a session: the leaking tests biggest first, known leaks (reported,
    not failed), tests over their max_peak budget; -v adds each leak's retainers and
    the highest peaks; exit 1 if a test leaked or went over its budget.

    --markdown OUT writes a summary for PR pages (also appended to
    $GITHUB_STEP_SUMMARY when set); --html OUT and --junit OUT write a run report
    in those forms (use -q to skip the terminal).  In GitHub Actions the leaks are
    also printed as annotations.
    """

    name = "report"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", help="a report written by --json or --gpu-leak-json")
        add_report_options(parser)
        add_markdown_option(parser)
        parser.add_argument(
            "-q", "--quiet", action="store_true", help="do not print the terminal report"
        )
        parser.add_argument("-v", "--verbose", action="count", default=0, help="show more detail")

    def run(self, args: argparse.Namespace) -> int:
        report = read_any(args.file)
        if isinstance(report, SessionReport):
            return self._session(report, args)
        name = report.script
        if not args.quiet:
            render_terminal(report.result, plain_console(), verbosity=args.verbose)
        write_reports(report.result, args, name=name)
        write_markdown(run_markdown(report.result, name=name), args)
        emit_annotations(report.result, main_file=name or None, verbosity=args.verbose)
        return EXIT_LEAK if report.result.leaked else EXIT_OK

    def _session(self, report: SessionReport, args: argparse.Namespace) -> int:
        for flag in ("html", "junit"):
            if getattr(args, flag, None):
                raise CliError(
                    f"--{flag} renders `memdiag run` reports; {args.file} is a pytest session "
                    "report: use pytest's --junitxml (each test carries memdiag_* properties) "
                    "or --markdown"
                )
        if not args.quiet:
            render_session(report, plain_console(), verbosity=args.verbose)
        write_markdown(session_markdown(report), args)
        if in_github_actions():
            print_annotations(session_annotations(report, verbosity=args.verbose), sys.stdout)
            sys.stdout.flush()
        return EXIT_LEAK if report.failed else EXIT_OK


COMMAND = ReportCommand()

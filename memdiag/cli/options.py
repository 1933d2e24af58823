"""Options shared by subcommands, parsed into library values with clear errors."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from memdiag.cli.errors import CliError
from memdiag.values.result import CheckResult
from memdiag.values.units import Tolerance, parse_seconds, parse_tolerances

__all__ = [
    "add_check_options",
    "add_markdown_option",
    "add_report_options",
    "check_output_paths",
    "emit_annotations",
    "tolerances_from",
    "write_markdown",
    "write_reports",
]


def add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--html",
        metavar="PATH",
        help="write a self-contained HTML report (memory timeline, findings, retainers)",
    )
    parser.add_argument(
        "--junit", metavar="PATH", help="write a JUnit XML report (a test case per device)"
    )


def add_markdown_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        help="write a Markdown summary for PR pages (also appended to $GITHUB_STEP_SUMMARY "
        "when set)",
    )


def write_markdown(text: str, args: argparse.Namespace) -> None:
    """Write ``--markdown`` if asked; append to ``$GITHUB_STEP_SUMMARY`` when set (a
    summary that cannot be appended is a warning: the verdict stands)."""
    from memdiag.report.base import write_report
    from memdiag.report.markdown import MarkdownReport, append_step_summary

    path = getattr(args, "markdown", None)
    if path:
        try:
            write_report(MarkdownReport(text), path)
        except OSError as exc:
            raise CliError(f"cannot write --markdown {path}: {exc.strerror or exc}") from None
    try:
        append_step_summary(text)
    except OSError as exc:
        print(
            f"memdiag: warning: cannot append to $GITHUB_STEP_SUMMARY: {exc.strerror or exc}",
            file=sys.stderr,
        )


def add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (every accelerator, else CPU tensors), cpu, cuda, or cuda:0,cuda:1",
    )
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="[DEVICE=]SIZE|PCT%",
        help="growth allowed per device, e.g. 16MiB, 0.5%%, cuda:1=64MiB (repeatable; "
        "default 1 MiB)",
    )
    parser.add_argument(
        "--settle",
        type=settle_seconds,
        default=1.0,
        metavar="SECONDS",
        help="how long to poll for memory to come back before classifying (default 1.0; "
        "use ~10 on ROCm, which releases VRAM lazily)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    add_report_options(parser)
    parser.add_argument(
        "--alloc-stacks",
        action="store_true",
        help="record allocation stacks (CUDA memory history) to show where leaked "
        "tensors were allocated",
    )
    parser.add_argument(
        "--no-analysis", action="store_true", help="skip the retainer analysis on a leak"
    )
    parser.add_argument(
        "--worker-reports",
        action="store_true",
        help="merge the reports of child processes that call memdiag.agent.install() "
        "(or run under `python -m memdiag.agent`)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="show more detail")


def settle_seconds(text: str) -> float:
    """argparse type for ``--settle``: finite, 0 or more (a usage error otherwise)."""
    try:
        return parse_seconds(text, what="--settle")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tolerances_from(values: list[str]) -> dict[str, Tolerance] | None:
    if not values:
        return None
    try:
        return parse_tolerances(values)
    except ValueError as exc:
        raise CliError(f"--tolerance {exc}") from None


def check_output_paths(args: argparse.Namespace) -> None:
    """Fail before the run, not after it, when a report could not be written; make
    every report path absolute now, so that it lands relative to the directory memdiag
    started in even when the program changes its working directory."""
    for flag in ("json", "html", "junit", "markdown"):
        path = getattr(args, flag, None)
        if not path:
            continue
        absolute = os.path.abspath(path)
        parent = Path(absolute).resolve().parent
        if not parent.is_dir():
            raise CliError(f"--{flag} {path}: directory {parent} does not exist; create it first")
        if Path(absolute).is_dir():
            raise CliError(f"--{flag} {path} is a directory; give a file name")
        setattr(args, flag, absolute)


def write_reports(result: CheckResult, args: argparse.Namespace, *, name: str = "") -> None:
    """Write the ``--html`` and ``--junit`` reports asked for; ``name`` titles them."""
    from memdiag.report.base import Renderer, write_report
    from memdiag.report.html import HtmlReport
    from memdiag.report.junit import JunitReport

    title = Path(name).name if name else ""
    wanted: list[tuple[str, str | None, Renderer]] = [
        ("--html", args.html, HtmlReport(result, title=title)),
        ("--junit", args.junit, JunitReport(result, suite=Path(name).stem or "memdiag")),
    ]
    for flag, path, renderer in wanted:
        if not path:
            continue
        try:
            write_report(renderer, path)
        except OSError as exc:
            raise CliError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


def emit_annotations(
    result: CheckResult, *, main_file: str | None, verbosity: int, file: TextIO | None = None
) -> None:
    """Print GitHub Actions annotations on ``file`` (default stdout) in GitHub Actions."""
    from memdiag.report.github import GithubReport, in_github_actions

    if in_github_actions():
        out = sys.stdout if file is None else file
        GithubReport(result, main_file=main_file, verbosity=verbosity).render(out)
        out.flush()

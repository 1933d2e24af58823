"""Merge the reports of several ranks or workers into one."""

from __future__ import annotations

import argparse

from rich.table import Table

from memdiag.cli.errors import EXIT_LEAK, EXIT_OK, CliError
from memdiag.cli.report import read_any
from memdiag.report.console import plain_console
from memdiag.report.json_report import write_json
from memdiag.report.session import SessionReport, merge_sessions, write_session_report
from memdiag.report.session_terminal import render_session
from memdiag.report.summary import finding_lines
from memdiag.report.terminal import render_terminal
from memdiag.values.units import format_bytes
from memdiag.workers.merge import (
    RankRow,
    ReportError,
    find_reports,
    load_reports,
    merge_results,
    rank_rows,
)

__all__ = ["COMMAND"]


def _rank_table(rows: list[RankRow]) -> Table:
    table = Table(title="per process", title_justify="left", expand=False, pad_edge=False)
    for column in ("rank", "pid", "leaked", "top finding"):
        table.add_column(column, justify="right" if column in ("rank", "pid") else "left")
    for row in rows:
        table.add_row(
            "-" if row.rank is None else str(row.rank),
            "-" if row.pid is None else str(row.pid),
            format_bytes(row.leaked_bytes) if row.leaked else "no",
            row.top,
        )
    return table


class MergeCommand:
    """Merge per-rank or per-worker reports, or pytest session reports, into one.

    Each PATH is a report or a directory of reports (*.json): `memdiag run --json
    out.json` under torchrun writes out.rank0.json, out.rank1.json...; workers under
    memdiag.agent write memdiag-PID.json.  Prints a table per rank (rank, pid, leaked
    bytes, top finding), then every finding labelled with its rank or worker.

    Pytest session reports (--gpu-leak-json of CI shards or separate runs) merge into
    one session report, as if the whole suite had run at once; a test in several
    reports keeps the last one's entry, with a note.

    Exit codes: 0 nothing leaked; 1 a rank (or a test) leaked; 2 no reports, a file
    that is not a memdiag report, or session and run reports mixed.
    """

    name = "merge"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="DIR_OR_FILE", help="reports to merge")
        parser.add_argument("--json", metavar="PATH", help="write the merged report as JSON")
        parser.add_argument("-v", "--verbose", action="count", default=0, help="show more detail")

    def run(self, args: argparse.Namespace) -> int:
        paths = [str(p) for p in find_reports(args.paths)]
        loaded = [(path, read_any(path)) for path in paths]
        sessions = [(p, r) for p, r in loaded if isinstance(r, SessionReport)]
        if sessions:
            if len(sessions) != len(loaded):
                runs = ", ".join(p for p, r in loaded if not isinstance(r, SessionReport))
                raise CliError(
                    f"cannot merge pytest session reports with `memdiag run` reports ({runs}); "
                    "merge each kind on its own"
                )
            return self._sessions(sessions, args)
        try:
            reports = load_reports(args.paths)
        except ReportError as exc:
            raise CliError(str(exc)) from None
        if not reports:
            raise CliError(f"no memdiag reports (*.json) found in {', '.join(args.paths)}")
        result = merge_results(reports)
        rows = rank_rows(reports)
        console = plain_console()
        if args.verbose:
            render_terminal(result, console, verbosity=args.verbose - 1)
        else:
            for line in finding_lines(result.findings, result=result):
                console.print(line, markup=False)
        console.print(_rank_table(rows))
        leaked = [row for row in rows if row.leaked]
        if leaked:
            names = ", ".join(row.label for row in leaked)
            console.print(f"LEAK: {len(leaked)} of {len(rows)} processes leaked: {names}")
        else:
            console.print(f"OK: memory within tolerance in all {len(rows)} processes")
        if args.json:
            try:
                write_json(result, args.json, merged=[row.to_json() for row in rows])
            except OSError as exc:
                raise CliError(f"cannot write --json {args.json}: {exc.strerror}") from None
        return EXIT_LEAK if result.leaked else EXIT_OK

    def _sessions(self, sessions: list[tuple[str, SessionReport]], args: argparse.Namespace) -> int:
        merged = merge_sessions(sessions)
        render_session(merged, plain_console(), verbosity=args.verbose)
        if args.json:
            try:
                write_session_report(merged, args.json)
            except OSError as exc:
                raise CliError(f"cannot write --json {args.json}: {exc.strerror}") from None
        return EXIT_LEAK if merged.failed else EXIT_OK


COMMAND = MergeCommand()

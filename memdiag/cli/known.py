"""Known-leaks files: write one from reports, show one."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from memdiag.cli.errors import EXIT_OK, CliError
from memdiag.cli.report import RunReport, read_any
from memdiag.report.console import plain_console, report_table
from memdiag.report.known import (
    KnownLeaks,
    KnownLeaksError,
    LeakRecord,
    known_file_data,
    leak_records,
    load_known,
    script_unit,
)
from memdiag.report.session import SessionReport
from memdiag.values.units import format_bytes, parse_size, plural

__all__ = ["COMMAND", "read_known"]


def read_known(path: str) -> KnownLeaks:
    """A known-leaks file, or the usage error (exit 2) that says what is wrong."""
    try:
        return load_known(path)
    except KnownLeaksError as exc:
        raise CliError(str(exc)) from None


def _leaks_of(path: str) -> list[LeakRecord]:
    report = read_any(path)
    if isinstance(report, SessionReport):
        return [leak for entry in report.checked for leak in entry.leaks]
    assert isinstance(report, RunReport)
    if not report.script:
        raise CliError(f"{path} does not name its script (context.script); cannot sign its leaks")
    return leak_records(report.result, script_unit(report.script))


def _table(known: KnownLeaks) -> Table:
    table = report_table()
    for column in ("test", "class", "device", "bytes", "held by"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for leak in known.leaks:
        sig = leak.signature
        table.add_row(
            sig.test,
            sig.kind,
            sig.device,
            format_bytes(leak.bytes),
            ", ".join(sig.roots) or "-",
        )
    return table


class KnownCommand:
    """Known leaks: leaks reported but not failed (pytest --gpu-leak-known FILE,
    memdiag run --known FILE, memdiag compare --known FILE).

    `memdiag known update REPORT... -o FILE` writes FILE listing every leak of the
    reports (pytest session reports or `memdiag run` reports) by signature: test (or
    script), class, device type and a hash of the retainers, never addresses or
    sizes, with the bytes each leaked.  An existing FILE is updated: entries still
    leaking keep their test pattern (globs such as test_x.py::test_a[*] are
    allowed), reason and tolerance; fixed leaks are dropped.  A known leak that
    grows beyond its bytes plus tolerance (default 1 MiB) fails again.

    `memdiag known show FILE` lists a file's entries.
    """

    name = "known"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION")
        update = sub.add_parser("update", help="write a known-leaks file from reports")
        update.add_argument("reports", nargs="+", metavar="REPORT", help="JSON reports")
        update.add_argument(
            "-o", "--output", required=True, metavar="FILE", help="the known-leaks file"
        )
        update.add_argument(
            "--tolerance",
            metavar="SIZE",
            help="growth allowed over each recorded size (default: kept, else 1MiB)",
        )
        show = sub.add_parser("show", help="list the entries of a known-leaks file")
        show.add_argument("file", help="the known-leaks file")

    def run(self, args: argparse.Namespace) -> int:
        console = plain_console()
        if args.action == "show":
            known = read_known(args.file)
            console.print(f"{args.file}: {plural(len(known.leaks), 'known leak')}")
            if known.leaks:
                console.print(_table(known))
            return EXIT_OK
        if args.action != "update":
            raise CliError("memdiag known needs an action: update or show (see --help)")
        tolerance = None
        if args.tolerance is not None:
            try:
                tolerance = parse_size(args.tolerance)
            except ValueError as exc:
                raise CliError(f"--tolerance: {exc}") from None
        leaks = [leak for path in args.reports for leak in _leaks_of(path)]
        previous = None
        try:
            previous = load_known(args.output)
        except KnownLeaksError as exc:
            if not str(exc).startswith("known-leaks file not found"):
                raise CliError(f"{exc}; fix or remove it first") from None
        known = known_file_data(leaks, previous=previous, tolerance=tolerance)
        text = json.dumps(known.to_json(), indent=2, sort_keys=True) + "\n"
        try:
            with open(args.output, "w", encoding="utf-8") as file:
                file.write(text)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        dropped = (
            0
            if previous is None
            else len(previous.leaks)
            - sum(
                1
                for k in previous.leaks
                if any(k.signature.key == n.signature.key for n in known.leaks)
            )
        )
        console.print(
            f"memdiag: wrote {plural(len(known.leaks), 'known leak')} to {args.output}"
            + (f" ({plural(dropped, 'fixed leak')} dropped)" if dropped else "")
        )
        if known.leaks:
            console.print(_table(known))
        return EXIT_OK


COMMAND = KnownCommand()

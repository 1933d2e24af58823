"""``memdiag`` command line: ``main()`` plus one module per subcommand."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from memdiag.cli.errors import EXIT_INTERNAL, EXIT_USAGE, CliError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from memdiag.cli import compare, devices, known, merge, report, run

    parser = argparse.ArgumentParser(
        prog="memdiag",
        description="Find GPU memory that does not come back, and say who holds it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (run, devices, report, merge, compare, known):
        command = module.COMMAND
        sub_parser = sub.add_parser(
            command.name,
            help=(command.__doc__ or "").strip().splitlines()[0],
            description=(command.__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.prepare_parser(sub_parser)
        sub_parser.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 clean, 1 leak, 2 usage error, 3 script failed, 4 internal error."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help is 0, bad usage is 2
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except CliError as exc:
        print(f"memdiag: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("memdiag: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - our own bug: say so, never exit 1 (that means leak)
        print("memdiag: internal error (please report this):", file=sys.stderr)
        traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

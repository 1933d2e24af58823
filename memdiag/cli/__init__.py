"""``memdiag`` command line: ``main()`` plus one module per subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any, NoReturn

from memdiag.cli import compare, devices, known, merge, report, run
from memdiag.cli.errors import EXIT_INTERNAL, EXIT_USAGE, CliError, internal_error, say
from memdiag.cli.stdio import OriginalStdio, quiet_exit_streams

__all__ = ["main", "version"]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``CliError``, exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("memdiag").strip()
        raise CliError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    try:
        return metadata.version("memdiag")
    except metadata.PackageNotFoundError:  # run from a source tree: the package's own
        return str(getattr(sys.modules.get("memdiag"), "__version__", "unknown"))


def _parser() -> tuple[Parser, dict[str, Any]]:
    parser = Parser(
        prog="memdiag",
        description="Find GPU memory that does not come back, and say who holds it.",
    )
    parser.add_argument("--version", action="version", version=f"memdiag {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands: dict[str, Any] = {}
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
        commands[command.name] = (command, sub_parser)
    return parser, commands


def _parse(argv: list[str]) -> argparse.Namespace:
    parser, commands = _parser()
    # The command is the first word that is not an option; a command may take the
    # rest of the line apart itself (`run` hands the script's arguments over verbatim).
    index = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if index is not None and argv[index] in commands:
        command, sub_parser = commands[argv[index]]
        split = getattr(command, "split_argv", None)
        if split is not None:
            own, extra = split(argv[index + 1 :], sub_parser)
            args = parser.parse_args([*argv[: index + 1], *own])
            for key, value in extra.items():
                setattr(args, key, value)
            return args
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.error(f"give a command: {', '.join(commands)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 clean, 1 leak, 2 usage error, 3 script failed, 4 internal error."""
    stdio = OriginalStdio()
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), stdio)
    finally:
        stdio.close()
        if argv is None:  # the process ends next: its exit code must stay ours
            quiet_exit_streams()


def _main(argv: list[str], stdio: Any) -> int:
    try:
        args = _parse(argv)
    except CliError as exc:
        say(stdio, f"memdiag: {exc}")
        return exc.exit_code
    except SystemExit as exc:  # argparse: --help and --version are 0
        return 0 if exc.code in (0, None) else EXIT_USAGE
    args.stdio = stdio
    try:
        return int(args.handler(args))
    except CliError as exc:
        say(stdio, f"memdiag: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        say(stdio, "memdiag: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - our own bug: say so, never exit 1 (that means leak)
        internal_error(stdio, exc)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

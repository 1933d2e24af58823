"""Exit codes, the one exception that carries a user-facing error, and how an error
reaches the user (one line on the original stderr; memdiag's own bug says so)."""

from __future__ import annotations

import os
import traceback
from typing import Any

EXIT_OK = 0
EXIT_LEAK = 1
EXIT_USAGE = 2
EXIT_SCRIPT_FAILED = 3
EXIT_INTERNAL = 4

DEBUG_ENV = "MEMDIAG_DEBUG"
"""Set (to anything but ``0``) to see the traceback of memdiag's own errors."""


class CliError(Exception):
    """A user error: printed as ``memdiag: <message>`` without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def internal_error(stdio: Any, exc: BaseException) -> None:
    """One line on memdiag's own failure; the traceback only with ``MEMDIAG_DEBUG=1``."""
    try:
        what = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - a hostile __str__ reached us
        what = type(exc).__name__
    if debugging():
        say(stdio, "".join(traceback.format_exception(exc)).rstrip("\n"))
        hint = ""
    else:
        hint = f"; {DEBUG_ENV}=1 shows the traceback"
    say(
        stdio,
        f"memdiag: internal error (a bug in memdiag, not in your program; please report "
        f"it{hint}): {what}",
    )


def say(stdio: Any, line: str) -> None:
    """``line`` on the original stderr of ``stdio`` (:class:`~memdiag.cli.stdio.OriginalStdio`);
    a closed or broken stream is not an error of its own."""
    try:
        stream = stdio.stderr()
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass

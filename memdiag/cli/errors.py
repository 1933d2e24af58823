"""Exit codes and the one exception that carries a user-facing error."""

from __future__ import annotations

EXIT_OK = 0
EXIT_LEAK = 1
EXIT_USAGE = 2
EXIT_SCRIPT_FAILED = 3
EXIT_INTERNAL = 4


class CliError(Exception):
    """A user error: printed as ``memdiag: <message>`` without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code

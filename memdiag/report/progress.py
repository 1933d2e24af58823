"""A status line for long steps (settling, a heap walk over a large heap): a rich
spinner on a terminal, nothing at all in CI logs, pipes or files."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.text import Text

__all__ = ["interactive", "status"]

_CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD")


def interactive(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """``stream`` (default stderr) is a terminal, and no CI system is running us."""
    env = os.environ if environ is None else environ
    target = sys.stderr if stream is None else stream
    if any(env.get(name) for name in _CI_VARIABLES) or env.get("TERM") == "dumb":
        return False
    try:
        return bool(target.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


@contextmanager
def status(
    message: str, *, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> Iterator[None]:
    """``with status("settling cuda:0 (up to 10 s)"): ...`` shows a spinner while the
    block runs, on ``stream`` (default stderr) only when :func:`interactive`."""
    if not interactive(stream, environ):
        yield
        return
    console = Console(
        file=sys.stderr if stream is None else stream, highlight=False, markup=False, emoji=False
    )
    with console.status(Text(message)):
        yield

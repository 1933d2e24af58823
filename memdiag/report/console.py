"""The one way memdiag makes a rich console: no markup, no emoji, no trailing spaces.

Everything memdiag prints can carry text it did not write: exception messages,
``sys.exit("...")`` text, phase names, type and variable names from the heap, file
names, a report someone edited by hand.  A console that parses ``[...]`` as markup
or ``:name:`` as emoji would raise ``MarkupError`` on ``[/]`` or silently eat
``[rocm]``, so every console memdiag prints through is made here with both off;
styles come from :class:`rich.text.Text` objects only.  Lines written to a file or
a pipe lose the padding rich adds to fill the width.  :func:`report_table` is the
one table style of every report.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import IO, Any, cast

from rich import box
from rich.console import Console
from rich.table import Table

__all__ = ["TrailingSpaceStripper", "encodable", "plain_console", "report_table"]

_UNSAFE_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def encodable(text: str, encoding: str | None = "utf-8") -> str:
    """``text`` with what ``encoding`` cannot hold (lone surrogates from non-UTF-8
    file names, characters outside an ASCII locale) written as backslash escapes."""
    codec = encoding or "utf-8"
    try:
        text.encode(codec)
        return text
    except (UnicodeEncodeError, LookupError):
        try:
            return text.encode(codec, "backslashreplace").decode(codec)
        except LookupError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def xml_text(text: str) -> str:
    """``text`` without what XML 1.0 forbids (control characters, lone surrogates):
    each is written as ``\\xNN`` / ``\\uNNNN`` instead."""
    return _UNSAFE_XML.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TrailingSpaceStripper:  # duck-typed IO[str]: what it lacks, it forwards
    """A text stream that drops spaces at the end of every line it forwards.

    Only for streams that are not terminals: on a terminal the padding may carry a
    background colour, and nobody diffs a terminal."""

    def __init__(self, stream: IO[str] | Callable[[], IO[str] | None]) -> None:
        self._get = stream if callable(stream) and not hasattr(stream, "write") else None
        self._fixed = None if self._get is not None else stream
        self._pending = ""

    @property
    def _stream(self) -> Any:
        return self._get() if self._get is not None else self._fixed

    def write(self, text: str) -> int:
        data = self._pending + text
        lines = data.split("\n")
        self._pending = lines.pop()
        stream = self._stream
        if lines and stream is not None:
            out = "".join(line.rstrip(" ") + "\n" for line in lines)
            stream.write(encodable(out, getattr(stream, "encoding", None)))
        return len(text)

    def flush(self) -> None:
        stream = self._stream
        if stream is None:
            return
        if self._pending.strip(" "):  # spaces only: wait for the rest of the line
            stream.write(encodable(self._pending, getattr(stream, "encoding", None)))
            self._pending = ""
        stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def plain_console(file: IO[str] | None = None, *, stderr: bool = False, **options: Any) -> Console:
    """A :class:`~rich.console.Console` that never interprets text as markup or emoji.

    ``file`` (default stdout, or stderr with ``stderr=True``): when it is not a
    terminal, trailing spaces are stripped from every line."""
    options.setdefault("highlight", False)
    if file is None:
        current = sys.stderr if stderr else sys.stdout
        if current is not None and _is_tty(current):
            return _readable(Console(stderr=stderr, markup=False, emoji=False, **options))
        # Resolved at every write, as rich does: a program may replace sys.stderr.
        getter = (lambda: sys.stderr) if stderr else (lambda: sys.stdout)
        return _readable(
            Console(
                file=cast(IO[str], TrailingSpaceStripper(getter)),
                markup=False,
                emoji=False,
                **options,
            )
        )
    if not _is_tty(file):
        file = cast(IO[str], TrailingSpaceStripper(file))
    return _readable(Console(file=file, markup=False, emoji=False, **options))


def report_table(title: str | None = None) -> Table:
    """A table in the style of every memdiag report: a rule under the header, no outer
    edge or padding, the title (if any) bold and on the left."""
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )


MIN_WIDTH = 40
"""Narrower than this (``COLUMNS=0``, a 5-column pane) and every line would wrap at a
character or two, or vanish: 80 columns are used instead."""


def _readable(console: Console) -> Console:
    if console.width < MIN_WIDTH:
        console.width = 80
    return console

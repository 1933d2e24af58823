"""The status line: a spinner on a terminal, silence in CI, pipes and files."""

from __future__ import annotations

import io
import time

import pytest

from memdiag.report.progress import interactive, status


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    with status("settling cuda:0", stream=stream, environ={}):
        pass
    with status("settling cuda:0"):  # pytest's captured stderr is not a terminal
        pass
    assert stream.getvalue() == "" and capsys.readouterr().err == ""


@pytest.mark.parametrize("env", [{"CI": "true"}, {"GITHUB_ACTIONS": "true"}, {"TERM": "dumb"}])
def test_silent_in_ci_even_on_a_terminal(env: dict[str, str]) -> None:
    stream = _Tty()
    assert not interactive(stream, env)
    with status("walking the heap", stream=stream, environ=env):
        pass
    assert stream.getvalue() == ""


def test_spinner_with_the_message_on_a_terminal() -> None:
    stream = _Tty()
    assert interactive(stream, {})
    ran = False
    with status("walking the heap (175662 objects)", stream=stream, environ={}):
        time.sleep(0.2)
        ran = True
    assert ran and "walking the heap (175662 objects)" in stream.getvalue()


def test_closed_stream_is_not_interactive() -> None:
    stream = io.StringIO()
    stream.close()
    assert not interactive(stream, {})

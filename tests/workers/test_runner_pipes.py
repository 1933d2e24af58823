"""A script that is a pipe or FIFO is read as Python reads it, and never hangs memdiag."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from memdiag.workers import runner


def test_a_fifo_nobody_writes_to_is_refused_after_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "script.py"
    os.mkfifo(fifo)
    monkeypatch.setattr(runner, "PIPE_WAIT_S", 0.3)
    started = time.monotonic()

    with pytest.raises(runner.TargetError, match=r"nothing came from it in 0\.3 s"):
        runner._read_script(fifo, str(fifo))

    assert time.monotonic() - started < 5


def test_a_fifo_with_a_writer_is_read_whole(tmp_path: Path) -> None:
    fifo = tmp_path / "script.py"
    os.mkfifo(fifo)
    text = b"x = 1\n" * 20_000  # more than one pipe buffer

    def write() -> None:
        time.sleep(0.2)  # the writer comes after memdiag opened the FIFO
        with open(fifo, "wb") as out:
            out.write(text)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert runner._read_script(fifo, str(fifo)) == text
    finally:
        writer.join()


def test_a_regular_file_is_read_as_it_is(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_bytes(b"print('hi')\n")
    assert runner._read_script(script, str(script)) == b"print('hi')\n"


def test_an_empty_anonymous_pipe_is_an_empty_script_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``memdiag run <(true)``: the writer is gone and no other can come, so python's
    answer (an empty script) is given without the FIFO's wait."""
    monkeypatch.setattr(runner, "PIPE_WAIT_S", 10.0)
    read_end, write_end = os.pipe()
    os.close(write_end)
    path = Path(f"/proc/self/fd/{read_end}")
    started = time.monotonic()
    try:
        assert runner._read_script(path, str(path)) == b""
    finally:
        os.close(read_end)
    assert time.monotonic() - started < 5

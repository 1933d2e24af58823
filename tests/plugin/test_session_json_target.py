"""``--gpu-leak-json`` writes as every memdiag report does: through a symlink (the link
stays) and in place on a device (it replaced ``/dev/full`` with a regular file and
said "written"); a write that fails is said, and fails the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CLEAN = "def test_clean():\n    pass\n"


def test_the_json_report_goes_through_a_symlink(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_clean=CLEAN)
    real = pytester.path / "reports" / "session.json"
    real.parent.mkdir()
    link = pytester.path / "latest.json"
    link.symlink_to(real)
    result = pytester.runpytest_subprocess("--gpu-leak-check", f"--gpu-leak-json={link}")
    result.assert_outcomes(passed=1)
    assert link.is_symlink() and '"report"' in real.read_text()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_device_is_written_in_place_and_a_failed_write_is_said(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_clean=CLEAN)
    # through a link of our own: a regression replaces the link, never /dev/full itself
    link = pytester.path / "full.json"
    link.symlink_to("/dev/full")
    result = pytester.runpytest_subprocess("--gpu-leak-check", f"--gpu-leak-json={link}")
    assert link.is_symlink() and Path("/dev/full").is_char_device()
    result.stdout.fnmatch_lines([f"*memdiag: cannot write --gpu-leak-json {link}: *"])
    assert "JSON report written" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR

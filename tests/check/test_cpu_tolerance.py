"""A percentage tolerance on cpu is of the host's RAM; without a RAM size, the
absolute part applies and a notice says so."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from memdiag.check.tracker import Tracker
from memdiag.values.units import parse_tolerance


def test_a_percentage_tolerance_on_cpu_is_of_the_host_ram() -> None:
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    tracker = Tracker(device="cpu", tolerance=parse_tolerance("0.5%"), settle=0)
    assert tracker.allowance("cpu", None) == int(ram * 0.5 / 100)
    assert tracker.allowance("cpu", None) > 0


def test_a_percentage_tolerance_without_a_ram_size_says_what_applies(tmp_path: Path) -> None:
    with mock.patch("memdiag.check.tracker.host_ram_total", return_value=None):
        tracker = Tracker(device="cpu", tolerance=parse_tolerance("2MiB,0.5%"), settle=0)
        with tracker:
            pass
    result = tracker.result
    assert result is not None
    assert any(
        "0.5% on cpu: this host's RAM size is unknown, so only 2.0 MiB applies" in n
        for n in result.notices
    ), result.notices

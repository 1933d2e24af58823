"""The analysis lists at most ``max_groups`` groups, but never drops one that holds
more than the tolerance (each of those alone fails the check, so each is named)."""

from __future__ import annotations

from typing import Any

import torch

from memdiag.retainers import analyze
from tests.retainers.leaks import targets_of

KiB = 1024


def _leak(module: Any, count: int, numel: int) -> dict[int, int]:
    tensors = []
    for index in range(count):
        tensor = torch.ones(numel)
        setattr(module, f"CACHE_{index:02d}", tensor)
        tensors.append(tensor)
    return targets_of(tensors)


def test_every_group_over_the_tolerance_is_listed_beyond_the_cap(leak_module: Any) -> None:
    report = analyze(_leak(leak_module, 25, 1024), max_groups=20, keep_over=2 * KiB)  # 4 KiB each
    assert len(report.groups) == 25
    assert not [n for n in report.notes if "not listed" in n]


def test_groups_under_the_tolerance_beyond_the_cap_are_counted_in_a_note(
    leak_module: Any,
) -> None:
    report = analyze(_leak(leak_module, 25, 1024), max_groups=20, keep_over=8 * KiB)
    assert len(report.groups) == 20
    (note,) = [n for n in report.notes if "not listed" in n]
    assert note == (
        "5 more groups, each holding at most the tolerance (8.0 KiB), retain 20.0 KiB in "
        "5 tensors; not listed (the analysis lists the 20 biggest and every one over the "
        "tolerance)"
    )

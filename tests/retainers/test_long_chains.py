"""A retainer chain of any length: analysed in linear memory, shown bounded."""

from __future__ import annotations

from typing import Any

import torch

from memdiag.retainers import analyze
from memdiag.retainers.paths import CHAIN_HEAD, CHAIN_TAIL
from tests.retainers.leaks import targets_of

DEPTH = 100_000


def test_a_100k_deep_chain_is_analysed_and_shown_bounded(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        tensor = torch.zeros(256)
        node: list[Any] = [tensor]
        for _ in range(DEPTH):
            node = [node]
        leak_module.DEEP = node
        return targets_of([tensor])

    report = analyze(leak())
    leak_module.__dict__.pop("DEEP")

    (group,) = report.groups
    assert group.root_name.endswith(".DEEP")
    assert group.tensor_count == 1 and group.retained_bytes == 1024
    # first and last hops, one elision hop for the rest: bounded, whatever the depth
    assert len(group.chain) == CHAIN_HEAD + 1 + CHAIN_TAIL
    elided = [e for e in group.chain if "more links" in e.label]
    assert [e.label for e in elided] == [
        f"... {DEPTH + 2 - CHAIN_HEAD - CHAIN_TAIL:,} more links ..."
    ]
    text = group.chain_text()
    assert text.startswith(f"{group.root_name} -> [0]")
    assert "more links" in text and text.endswith("(cpu, 1.0 KiB)")
    assert len(text) < 400
    assert group.common_length <= len(group.chain)

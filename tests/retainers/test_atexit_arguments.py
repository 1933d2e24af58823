"""A tensor passed as an atexit callback's argument is held by atexit (in C, where no
referrer search sees it): the analysis names that callback, not "native code"."""

from __future__ import annotations

import atexit

import torch

from memdiag.report.advice import advice_for_group
from memdiag.retainers import analyze
from tests.retainers.leaks import targets_of


def _save(weights: torch.Tensor, *, extra: torch.Tensor | None = None) -> None:
    """Registered with atexit by the test (never run: unregistered after)."""


def test_atexit_arguments_are_named_with_their_callback() -> None:
    def leak() -> dict[int, int]:
        first, second = torch.ones(1024), torch.ones(2048)
        atexit.register(_save, first, extra=second)
        return targets_of([first, second])

    try:
        report = analyze(leak())
    finally:
        atexit.unregister(_save)
    chains = sorted(g.chain_text() for g in report.groups)
    assert chains == [
        "atexit callbacks -> arguments of function _save -> ['extra'] (cpu, 8.0 KiB)",
        "atexit callbacks -> arguments of function _save -> [0] (cpu, 4.0 KiB)",
    ], report.text()
    assert not report.unrooted  # not "native code"
    advice = advice_for_group(report.groups[0])
    assert advice.startswith("call `atexit.unregister(_save)` in shutdown, or pass it no tensors")

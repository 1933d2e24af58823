"""The plugin's markers: each one's ``markers`` help line is built from its signature and
docstring, and its arguments are bound through that same signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = ["MARKERS", "MarkOptions", "marker_help", "options_from"]


def gpu_leak_check(
    *,
    tolerance: str | int | None = None,
    settle: float | None = None,
    max_peak: str | int | None = None,
) -> None:
    """check this test for device memory leaks, also without --gpu-leak-check; tolerance
    (e.g. "16MiB", "0.5%") and settle (seconds) override the options; max_peak (e.g.
    "2GiB") fails the test when any phase's peak rises more than that above its baseline
    (peak counters need an accelerator: on CPU it is a lower bound from phase-end values)."""


def no_gpu_leak_check(*, reason: str = "") -> None:
    """do not check this test (or, with pytestmark, this module or class) for leaks."""


MARKERS: tuple[Callable[..., None], ...] = (gpu_leak_check, no_gpu_leak_check)


def marker_help(fn: Callable[..., None]) -> str:
    signature = inspect.signature(fn, eval_str=True).replace(
        return_annotation=inspect.Signature.empty
    )
    doc = " ".join((fn.__doc__ or "").split())
    return f"{fn.__name__}{signature}: {doc}"


@dataclass(frozen=True)
class MarkOptions:
    """What a ``gpu_leak_check`` marker asks for, validated."""

    tolerance: Any = None
    """A :class:`memdiag.values.units.Tolerance` or ``None``."""
    settle: float | None = None
    max_peak: int | None = None


def _bind(mark: pytest.Mark, fn: Callable[..., None]) -> dict[str, Any]:
    try:
        bound = inspect.signature(fn, eval_str=True).bind(*mark.args, **mark.kwargs)
    except TypeError as exc:
        raise ValueError(f"@pytest.mark.{fn.__name__}: {exc}") from None
    return dict(bound.arguments)


def options_from(mark: pytest.Mark | None) -> MarkOptions:
    """Validate a ``gpu_leak_check`` marker's arguments; raises ``ValueError`` saying why."""
    if mark is None:
        return MarkOptions()
    from memdiag.values.units import parse_seconds, parse_size, parse_tolerance

    args = _bind(mark, gpu_leak_check)
    where = "@pytest.mark.gpu_leak_check"
    tolerance = args.get("tolerance")
    settle = args.get("settle")
    max_peak = args.get("max_peak")
    try:
        parsed_tolerance = None if tolerance is None else parse_tolerance(tolerance)
    except ValueError as exc:
        raise ValueError(
            f"{where}(tolerance={tolerance!r}): {exc}; accepted: bytes, SIZE or PCT%"
        ) from None
    if settle is not None:
        if not isinstance(settle, (int, float, str)) or isinstance(settle, bool):
            raise ValueError(f"{where}(settle={settle!r}): accepted: 0 or more seconds")
        try:
            settle = parse_seconds(settle, what="settle")
        except ValueError as exc:
            raise ValueError(f"{where}(settle={settle!r}): {exc}") from None
    try:
        parsed_peak = None if max_peak is None else parse_size(max_peak)
    except ValueError as exc:
        raise ValueError(f"{where}(max_peak={max_peak!r}): {exc}") from None
    return MarkOptions(
        tolerance=parsed_tolerance,
        settle=None if settle is None else float(settle),
        max_peak=parsed_peak,
    )


def closest(node: pytest.Item | pytest.Collector) -> pytest.Mark | None:
    """The closest of ``gpu_leak_check`` / ``no_gpu_leak_check`` on the node or its parents."""
    for mark in node.iter_markers():
        if mark.name in ("gpu_leak_check", "no_gpu_leak_check"):
            return mark
    return None

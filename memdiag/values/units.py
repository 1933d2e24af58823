"""Byte sizes: one formatter and one parser, binary units (KiB, MiB, GiB) throughout."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "MAX_SIZE",
    "Tolerance",
    "describe_tolerances",
    "format_bytes",
    "parse_seconds",
    "parse_size",
    "parse_tolerance",
    "parse_tolerances",
    "plural",
]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
MAX_SIZE = 2**60
"""The largest size accepted (1 EiB): any device and any budget is smaller."""
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def format_bytes(n: int | float, *, signed: bool = False) -> str:
    """``1536 -> '1.5 KiB'``; ``signed=True`` prefixes ``+`` for growth."""
    sign = "-" if n < 0 else ("+" if signed and n > 0 else "")
    value = float(abs(n))
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{sign}{int(value)} B"
            return f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def parse_seconds(value: object, *, what: str = "settle") -> float:
    """A finite, non-negative number of seconds (``nan`` and ``inf`` would poll forever);
    raises ``ValueError`` saying what is accepted."""
    try:
        seconds = float(str(value).strip()) if not isinstance(value, (int, float)) else value
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"{what} {str(value)[:40]!r} is not a number of seconds; accepted: a finite number "
            f"from 0 to {MAX_SECONDS:g}, e.g. 1.0 (ROCm: 10)"
        )
    if seconds > MAX_SECONDS:
        raise ValueError(
            f"{what} {seconds:g} s is more than a day; accepted: 0 to {MAX_SECONDS:g} seconds"
        )
    return float(seconds)


MAX_SECONDS = 86400.0


def plural(count: int, word: str, words: str | None = None) -> str:
    """``plural(1, "storage") -> '1 storage'``, ``plural(2, "process", "processes")``."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def parse_size(text: str | int) -> int:
    """``'16MiB' -> 16777216``; plain numbers (and ints) are bytes.  Raises ``ValueError``."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{text} is not a size; use 0 or more bytes")
        if text > MAX_SIZE:
            raise ValueError(f"a size of {len(str(text))} digits is larger than any device")
        return text
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a size; use bytes or a string such as 16MiB")
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _FACTORS:
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"
        raise ValueError(
            f"{shown!r} is not a size; use bytes or a number with a unit such as 16MiB, 1.5GiB"
        )
    number = match.group(1)
    if len(number) > 40:  # Decimal would take it, but no device holds 10**40 bytes
        raise ValueError(
            f"a size of {len(number)} digits is larger than any device; the largest accepted "
            f"is {format_bytes(MAX_SIZE)}"
        )
    value = int(Decimal(number) * _FACTORS[match.group(2).lower()])
    if value > MAX_SIZE:
        raise ValueError(
            f"{text.strip()!r} is larger than any device; the largest accepted is "
            f"{format_bytes(MAX_SIZE)}"
        )
    return value


@dataclass(frozen=True)
class Tolerance:
    """How much growth over baseline is noise: ``max(bytes, percent of device total)``."""

    bytes: int = 8 * 1024**2
    percent: float = 0.0

    def allowance(self, total: int | None) -> int:
        by_percent = int(total * self.percent / 100) if total and self.percent else 0
        return max(self.bytes, by_percent)

    def __str__(self) -> str:
        parts = [format_bytes(self.bytes)]
        if self.percent:
            parts.append(f"{self.percent:g}% of device")
        return " or ".join(parts)


def parse_tolerance(text: str | int) -> Tolerance:
    """``'16MiB'``, ``'0.5%'`` or ``'16MiB,0.5%'`` (the larger applies); an int is bytes."""
    if not isinstance(text, str):
        return Tolerance(bytes=parse_size(text))
    size = 0
    percent = 0.0
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.endswith("%"):
            try:
                percent = float(part[:-1])
            except ValueError:
                raise ValueError(f"{part[:40]!r} is not a percentage such as 0.5%") from None
            if not math.isfinite(percent) or not 0 <= percent <= 100:
                raise ValueError(f"{part!r}: a percentage must lie between 0% and 100%")
        else:
            size = parse_size(part)
    if not text.strip():
        raise ValueError("the tolerance is empty; use e.g. 16MiB or 0.5%")
    return Tolerance(bytes=size, percent=percent)


def parse_tolerances(values: Iterable[str]) -> dict[str, Tolerance]:
    """``["16MiB", "cuda:1=64MiB"]`` -> ``{"*": ..., "cuda:1": ...}`` (``"*"``: every
    other device).  Raises ``ValueError`` naming the value and what is accepted."""
    result: dict[str, Tolerance] = {}
    for value in values:
        device, sep, amount = str(value).rpartition("=")
        try:
            result[device.strip() if sep else "*"] = parse_tolerance(amount)
        except ValueError as exc:
            raise ValueError(
                f"{value!r}: {exc}; accepted: SIZE, PCT% or DEVICE=SIZE, e.g. 16MiB, 0.5%, "
                "cuda:1=64MiB"
            ) from None
    return result


def describe_tolerances(tolerances: Mapping[str, Tolerance] | None, default: Tolerance) -> str:
    """``16.0 MiB, cuda:1=64.0 MiB``; ``default`` when there are none."""
    if not tolerances:
        return str(default)
    return ", ".join(str(t) if d == "*" else f"{d}={t}" for d, t in tolerances.items())

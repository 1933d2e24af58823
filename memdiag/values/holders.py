"""Who holds a finding's bytes, in words that carry the right numbers.

A finding's size (bytes over baseline on a device) and a retainer group's size (the
storages that one root keeps) are different numbers: a 60 MiB leak held by three
roots is not "60 MiB held by" the first one.  Every one-line view (the verdict
banner, a test's failure line, a table cell) says the group's own bytes next to its
chain, and how much the other groups hold, through :func:`held_text`.
"""

from __future__ import annotations

from collections.abc import Iterable

from memdiag.values.retainers import RetainerGroup, blame_order
from memdiag.values.units import format_bytes, plural

__all__ = ["held_text", "in_blame_order"]


def in_blame_order(groups: Iterable[RetainerGroup]) -> list[RetainerGroup]:
    """Retainer groups in :func:`~memdiag.values.retainers.blame_order`: named roots
    before native code and unreachable cycles, framework retention last, each biggest
    first."""
    return sorted(groups, key=blame_order)


def held_text(groups: Iterable[RetainerGroup], total: int | None = None) -> str:
    """``held by lru_cache of m.f -> ... (cuda:0, 8.0 MiB)`` when one group holds all of
    ``total`` (the bytes the line already states); otherwise each number is written next
    to the groups it belongs to: ``24.0 MiB held by ...; 36.0 MiB by 2 other
    retainers``.  ``""`` when there is no retainer."""
    ranked = in_blame_order(groups)
    if not ranked:
        return ""
    top, rest = ranked[0], ranked[1:]
    if not rest and total is not None and top.retained_bytes == total:
        return f"held by {top.chain_text()}"
    text = f"{format_bytes(top.retained_bytes)} held by {top.chain_text()}"
    if rest:
        others = sum(g.retained_bytes for g in rest)
        text += f"; {format_bytes(others)} by {plural(len(rest), 'other retainer')}"
    return text

"""A device's memory across phases as an inline SVG line chart (no script, no fonts
to fetch): one point per reading (baseline, each phase's peak and end, the final
check), a line per series, a tooltip per point, binary-unit ticks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from memdiag.report.facts import Point
from memdiag.values.units import format_bytes

__all__ = ["ALLOCATOR_SERIES", "DRIVER_SERIES", "Series", "nice_ticks", "timeline_svg"]


@dataclass(frozen=True)
class Series:
    """One line of the chart: which :class:`Point` field, its name and colour."""

    field: str
    name: str
    color: str


ALLOCATOR_SERIES = (
    Series("allocated", "allocated", "#2563eb"),
    Series("reserved", "reserved", "#d97706"),
)
DRIVER_SERIES = (
    Series("driver_used", "driver used", "#6b7280"),
    Series("process_used", "this process", "#059669"),
)

_W, _H = 720, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 84, 16, 34, 46


def nice_ticks(top: int, *, count: int = 5) -> list[int]:
    """Ticks from 0 to at least ``top`` at a power-of-two step: about ``count`` of them,
    each a round number of KiB, MiB or GiB."""
    if top <= 0:
        return [0, 1024]
    step = 1
    while step * count < top:
        step *= 2
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _value(point: Point, field: str) -> int | None:
    value = getattr(point, field)
    return value if isinstance(value, int) else None


def _x_label(point: Point) -> str:
    if point.kind == "baseline":
        return "baseline"
    if point.kind == "final":
        return "final"
    return point.phase if point.kind == "end" else ""


def timeline_svg(
    points: Sequence[Point],
    series: Sequence[Series],
    *,
    title: str,
    threshold: tuple[str, int] | None = None,
) -> str:
    """The chart as an ``<svg>`` element; ``""`` when no series has a value.

    ``threshold`` is a dashed horizontal line (label, bytes), e.g. baseline plus the
    tolerance: allocated memory above it at the final check is a leak."""
    shown = [s for s in series if any(_value(p, s.field) is not None for p in points)]
    if not shown or not points:
        return ""
    values = [v for s in shown for p in points if (v := _value(p, s.field)) is not None]
    top = max([*values, threshold[1] if threshold else 0])
    ticks = nice_ticks(top)
    y_max = ticks[-1] or 1
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    span = max(1, len(points) - 1)

    def x(i: int) -> float:
        return _LEFT + (plot_w * i / span if len(points) > 1 else plot_w / 2)

    def y(v: int) -> float:
        return _TOP + plot_h - plot_h * v / y_max

    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#d4d4d8"/>',
    ]
    for tick in ticks:
        ty = y(tick)
        out.append(
            f'<line x1="{_LEFT}" y1="{ty:.1f}" x2="{_W - _RIGHT}" y2="{ty:.1f}" stroke="#e4e4e7"/>'
            f'<text x="{_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#52525b">{escape(format_bytes(tick))}</text>'
        )
    for i, point in enumerate(points):
        label = _x_label(point)
        if point.kind == "peak":
            out.append(
                f'<line x1="{x(i):.1f}" y1="{_TOP}" x2="{x(i):.1f}" y2="{_TOP + plot_h}" '
                'stroke="#e4e4e7" stroke-dasharray="2 3"/>'
            )
        if label:
            out.append(
                f'<text x="{x(i):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle" '
                f'font-size="11" fill="#3f3f46">{escape(label)}</text>'
            )
    if threshold is not None:
        name, value = threshold
        ty = y(value)
        out.append(
            f'<line x1="{_LEFT}" y1="{ty:.1f}" x2="{_W - _RIGHT}" y2="{ty:.1f}" stroke="#dc2626" '
            f'stroke-dasharray="6 4"><title>{escape(name)}: {format_bytes(value)}</title></line>'
            f'<text x="{_W - _RIGHT - 4}" y="{ty - 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="#dc2626">{escape(name)}</text>'
        )
    for s in shown:
        coords = [
            (x(i), y(v)) for i, p in enumerate(points) if (v := _value(p, s.field)) is not None
        ]
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
        out.append(
            f'<polyline class="series" data-series="{s.field}" points="{path}" fill="none" '
            f'stroke="{s.color}" stroke-width="2"/>'
        )
        for i, p in enumerate(points):
            v = _value(p, s.field)
            if v is None:
                continue
            tip = f"{p.label}: {s.name} {format_bytes(v)} ({v} bytes)"
            fill = "#ffffff" if p.kind == "peak" else s.color
            out.append(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="4" fill="{fill}" stroke="{s.color}" '
                f'stroke-width="2"><title>{escape(tip)}</title></circle>'
            )
    legend_x = _LEFT
    for s in shown:
        out.append(
            f'<rect x="{legend_x}" y="10" width="12" height="12" fill="{s.color}"/>'
            f'<text x="{legend_x + 16}" y="20" font-size="12" '
            f'fill="#18181b">{escape(s.name)}</text>'
        )
        legend_x += 24 + 7 * len(s.name)
    if any(p.kind == "peak" for p in points):
        out.append(
            f'<circle cx="{legend_x + 6}" cy="16" r="4" fill="#ffffff" stroke="#3f3f46" '
            f'stroke-width="2"/><text x="{legend_x + 16}" y="20" font-size="12" '
            'fill="#18181b">peak within phase</text>'
        )
    out.append("</svg>")
    return "\n".join(out)

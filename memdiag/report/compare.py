"""Compare two runs of the same program (base branch vs PR): per device, the leaked
bytes and the peak allocated bytes, and whether the head run is worse than the base
run beyond a tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from memdiag.report.console import plain_console, report_table
from memdiag.report.facts import leaked_bytes, peak_bytes
from memdiag.values.result import CheckResult
from memdiag.values.units import format_bytes, plural

__all__ = ["COLUMNS", "Comparison", "DeviceComparison", "compare"]

COLUMNS = ("device", "base leaked", "head leaked", "change", "base peak", "head peak", "change")
"""The columns of a comparison's table, in every format; :meth:`DeviceComparison.cells`
fills them."""


def _size(value: int | None, *, signed: bool = False) -> str:
    return "-" if value is None else format_bytes(value, signed=signed)


@dataclass(frozen=True)
class DeviceComparison:
    """One device in both runs; ``None`` where a run did not see the device or the value.

    ``leaked`` is what each run called leaked (findings over its tolerance); ``peak``
    the highest allocated bytes of the run (phase peaks, else phase-end readings)."""

    device: str
    base_leaked: int | None
    head_leaked: int | None
    base_peak: int | None
    head_peak: int | None
    tolerance: int
    peak_tolerance: int | None = None
    """Peak growth that is noise (default: ``tolerance``)."""
    peak_percent: float = 0.0
    """Peak growth that is noise, in percent of the base peak; the larger applies."""

    @staticmethod
    def _change(base: int | None, head: int | None) -> int | None:
        return None if base is None or head is None else head - base

    @property
    def leaked_change(self) -> int | None:
        return self._change(self.base_leaked, self.head_leaked)

    @property
    def peak_change(self) -> int | None:
        return self._change(self.base_peak, self.head_peak)

    @property
    def peak_allowance(self) -> int:
        absolute = self.tolerance if self.peak_tolerance is None else self.peak_tolerance
        return max(absolute, int(max(self.base_peak or 0, 0) * self.peak_percent / 100))

    def reasons(self) -> list[str]:
        """Why the head run is worse on this device, with the numbers; empty if it is not."""
        out = []
        leaks = (self.leaked_change, self.base_leaked, self.head_leaked, self.tolerance)
        peaks = (self.peak_change, self.base_peak, self.head_peak, self.peak_allowance)
        for what, (change, base, head, allowed) in (
            ("leaks {} more", leaks),
            ("peaks {} higher", peaks),
        ):
            if change is not None and change > allowed:
                out.append(
                    f"{self.device}: head {what.format(format_bytes(change))} than base "
                    f"({format_bytes(base or 0)} -> {format_bytes(head or 0)}, "
                    f"tolerance {format_bytes(allowed)})"
                )
        return out

    def cells(self) -> tuple[str, ...]:
        """This device's row under :data:`COLUMNS` (``-`` where a run has no value)."""
        return (
            self.device,
            _size(self.base_leaked),
            _size(self.head_leaked),
            _size(self.leaked_change, signed=True),
            _size(self.base_peak),
            _size(self.head_peak),
            _size(self.peak_change, signed=True),
        )


@dataclass(frozen=True)
class Comparison:
    devices: tuple[DeviceComparison, ...]
    tolerance: int
    notes: tuple[str, ...] = ()

    @property
    def worse(self) -> bool:
        return any(d.reasons() for d in self.devices)

    def reasons(self) -> list[str]:
        return [reason for d in self.devices for reason in d.reasons()]

    def verdict(self) -> str:
        """``FAIL: head is worse than base on N devices``, or ``OK: ...not worse...``."""
        if self.worse:
            count = sum(1 for d in self.devices if d.reasons())
            return f"FAIL: head is worse than base on {plural(count, 'device')}"
        return f"OK: head is not worse than base on {plural(len(self.devices), 'device')}"

    def table(self) -> Table:
        table = report_table(f"base vs head (tolerance {format_bytes(self.tolerance)})")
        table.add_column(COLUMNS[0])
        for column in COLUMNS[1:]:
            table.add_column(column, justify="right", no_wrap=True)
        for d in self.devices:
            table.add_row(*d.cells(), style="red" if d.reasons() else None)
        return table

    def render_to(self, console: Console) -> None:
        console.print(self.table())
        for note in self.notes:
            console.print(Text(f"note: {note}", style="dim"))
        for reason in self.reasons():
            console.print(Text(f"worse: {reason}", style="red"))
        if self.worse:
            console.print(Text(self.verdict(), style="bold red"))
        else:
            tolerance = f" (tolerance {format_bytes(self.tolerance)})"
            console.print(Text(self.verdict() + tolerance, style="bold green"))

    def render(self, file: TextIO) -> None:
        self.render_to(plain_console(file))


def compare(
    base: CheckResult,
    head: CheckResult,
    *,
    tolerance: int,
    peak_tolerance: int | None = None,
    peak_percent: float = 0.0,
) -> Comparison:
    """Every device of either run; a device only one run saw is shown, never failed.
    A peak is worse beyond ``peak_tolerance`` (default ``tolerance``) and beyond
    ``peak_percent`` of the base peak."""
    base_devices = [d.device for d in base.devices]
    head_devices = [d.device for d in head.devices]
    order = base_devices + [d for d in head_devices if d not in base_devices]
    rows = []
    notes = []
    for device in order:
        in_base, in_head = device in base_devices, device in head_devices
        if not (in_base and in_head):
            notes.append(f"{device} is only in the {'base' if in_base else 'head'} run")
        rows.append(
            DeviceComparison(
                device=device,
                base_leaked=leaked_bytes(base, device) if in_base else None,
                head_leaked=leaked_bytes(head, device) if in_head else None,
                base_peak=peak_bytes(base, device) if in_base else None,
                head_peak=peak_bytes(head, device) if in_head else None,
                tolerance=tolerance,
                peak_tolerance=peak_tolerance,
                peak_percent=peak_percent,
            )
        )
    return Comparison(tuple(rows), tolerance, tuple(notes))

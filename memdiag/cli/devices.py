"""List backends, whether each is usable here (and why not), and device readings."""

from __future__ import annotations

import argparse

from rich.table import Table

from memdiag.backends.base import BackendUnavailable
from memdiag.backends.registry import probe_all
from memdiag.report.console import plain_console
from memdiag.values.units import format_bytes

__all__ = ["COMMAND"]


def _b(value: int | None) -> str:
    return "-" if value is None else format_bytes(value)


class DevicesCommand:
    """List memdiag's backends, their availability or the reason, and current readings."""

    name = "devices"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        return None

    def run(self, args: argparse.Namespace) -> int:
        console = plain_console()
        backends = Table(title="backends", title_justify="left")
        backends.add_column("backend")
        backends.add_column("status")
        readings = Table(title="devices", title_justify="left")
        for column in ("device", "backend", "allocated", "reserved", "driver used", "total"):
            readings.add_column(
                column, justify="left" if column in ("device", "backend") else "right"
            )
        for backend, name, availability in probe_all():
            status = (
                "available" if availability.available else f"unavailable: {availability.reason}"
            )
            backends.add_row(name, status)
            if backend is None or not availability.available or name == "fake":
                continue
            try:
                for device in backend.devices():
                    r = backend.read(device)
                    readings.add_row(
                        device,
                        name,
                        _b(r.allocated),
                        _b(r.reserved),
                        _b(r.driver_used),
                        _b(r.total),
                    )
            except BackendUnavailable as exc:
                readings.add_row("?", name, f"error: {exc}", "", "", "")
            finally:
                backend.close()
        console.print(backends)
        console.print(readings)
        return 0


COMMAND = DevicesCommand()

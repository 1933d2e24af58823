"""Memory that is someone else's: allocated while a tracker runs, moved into its baseline.

A pytest fixture of wider scope set up lazily after a test's baseline (requested by a
function fixture, or through ``request.getfixturevalue``), or a test opted out inside
a module-wide check, allocates memory the check must not blame.  An
:class:`Exclusion` reads the devices and notes the live storages when it starts;
when it ends, what changed since is added to the tracker's baseline and what storages
appeared is added to its ledger, so neither counts as growth.
"""

from __future__ import annotations

import dataclasses
from types import TracebackType
from typing import Any

from memdiag.check.tracker import Tracker
from memdiag.heap.census import StorageLedger
from memdiag.values.readings import DeviceReading, ProcessUsage

__all__ = ["Exclusion", "shifted"]


class Exclusion:
    """What ``tracker`` sees allocated between :meth:`start` and :meth:`end` is not its own.

    Costs a device reading and a walk over the heap's tensors at each end; use it
    around the rare allocation that belongs elsewhere, not around every test.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._before: dict[str, DeviceReading] | None = None
        self._known: StorageLedger | None = None

    def start(self) -> Exclusion:
        with self.tracker.spending():
            self._known = StorageLedger()
            self._known.refresh()
            self._before = self.tracker.read()
        return self

    def end(self) -> None:
        """Move what was allocated since :meth:`start` into the baseline and the ledger."""
        before, known = self._before, self._known
        if before is None or known is None:
            return
        self._before = self._known = None
        with self.tracker.spending():
            after = self.tracker.read()
            self.tracker.rebaseline(
                {
                    device: shifted(base, before[device], after[device])
                    for device, base in self.tracker.baseline.items()
                    if device in before and device in after
                }
            )
            self.tracker.ledger.adopt_new(known)
            known.clear()

    def __enter__(self) -> Exclusion:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()


def shifted(base: DeviceReading, before: DeviceReading, after: DeviceReading) -> DeviceReading:
    """``base`` plus what changed from ``before`` to ``after`` (memory that is not ours)."""
    changes: dict[str, Any] = {}
    for name in ("allocated", "reserved", "active", "process_used", "driver_used"):
        b, x, y = getattr(base, name), getattr(before, name), getattr(after, name)
        if b is not None and x is not None and y is not None:
            changes[name] = b + (y - x)
    if after.processes:
        was = {p.pid: p.used for p in before.processes}
        mine = {p.pid: p for p in base.processes}
        merged = dict(mine)
        for proc in after.processes:
            old = mine.get(proc.pid)
            delta = proc.used - was.get(proc.pid, 0)
            merged[proc.pid] = ProcessUsage(
                pid=proc.pid, used=(old.used if old else 0) + delta, name=proc.name
            )
        changes["processes"] = tuple(merged.values())
    return dataclasses.replace(base, **changes)

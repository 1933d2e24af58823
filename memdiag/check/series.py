"""A series of trackers in one process that share what they know of the heap.

A test suite checks its tests one after another.  Each check's baseline must know
which tensor storages were alive before it, so that "created since baseline" needs
no heap walk at the baseline; a :class:`CheckSeries` keeps one
:class:`~memdiag.heap.census.StorageLedger` for all of them and refreshes it (a walk over
the heap's tensors) only when it may be wrong: before the first baseline, after
something outside the series' checks allocated (:meth:`CheckSeries.mark_stale`:
a fixture of wider scope was set up), after a leak, and when memory kept by passing
checks drifted by more than half the tolerance since the last refresh.  A passing
check in between reads counters only.
"""

from __future__ import annotations

from collections.abc import Mapping

from memdiag.backends.registry import Selection
from memdiag.check.tracker import Tracker
from memdiag.heap.census import StorageLedger
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult
from memdiag.values.units import Tolerance

__all__ = ["CheckSeries"]


class CheckSeries:
    """Starts and checks trackers that share one storage ledger."""

    def __init__(self, selection: Selection, *, record_alloc_stacks: bool = False) -> None:
        self.selection = selection
        self.record_alloc_stacks = record_alloc_stacks
        self.ledger = StorageLedger()
        self._stale = True
        self._at_refresh: dict[str, DeviceReading] = {}

    def mark_stale(self) -> None:
        """Memory was allocated outside the series' checks: refresh before the next baseline."""
        self._stale = True

    def start(
        self,
        *,
        tolerance: Mapping[str, Tolerance] | None,
        settle: float,
        name: str,
    ) -> Tracker:
        """A started tracker whose baseline is now (no ``gc.collect()``: it stays cheap)."""
        refreshed = self._stale
        if refreshed:
            self.ledger.refresh()
            self._stale = False
        tracker = Tracker(
            device=self.selection,
            tolerance=tolerance,
            settle=settle,
            ledger=self.ledger,
            record_alloc_stacks=self.record_alloc_stacks,
            collect_at_start=False,
            name=name,
        ).start()
        if refreshed:
            self._at_refresh = dict(tracker.baseline)
        return tracker

    def check(self, tracker: Tracker) -> CheckResult:
        """``tracker.check()``, noting whether the ledger needs a refresh afterwards."""
        result = tracker.check()
        if result.leaked:
            self._stale = True
            return result
        for check in result.devices:
            then = self._at_refresh.get(check.device)
            if then is None or then.allocated is None or check.final.allocated is None:
                continue
            if check.final.allocated - then.allocated > check.allowance // 2:
                self._stale = True
        return result

    def clear(self) -> None:
        self.ledger.clear()
        self._at_refresh = {}
        self._stale = True

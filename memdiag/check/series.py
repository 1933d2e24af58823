"""A series of trackers in one process that share what they know of the heap.

A test suite checks its tests one after another.  Each check's baseline must know
which tensor storages were alive before it, so that "created since baseline" needs
no heap walk at the baseline; a :class:`CheckSeries` keeps one
:class:`~memdiag.heap.census.StorageLedger` for all of them and refreshes it (a walk over
the heap's tensors) only when it may be wrong: before the first baseline, after
something outside the series' checks allocated (:meth:`CheckSeries.mark_stale`:
a fixture of wider scope was set up), after a leak, and when memory kept by passing
checks drifted since the last refresh (storages made then and still alive are not
in the ledger, so a gated baseline would miss them).  Drift is read from what the
checks read anyway: the host counters (:mod:`memdiag.heap.hostmem`) where the CPU
goes through the gate, the devices' ``allocated`` counters elsewhere.  A passing
check in between reads counters only.
"""

from __future__ import annotations

from collections.abc import Mapping

from memdiag.backends.registry import Selection
from memdiag.check.tracker import Tracker
from memdiag.heap.census import StorageLedger
from memdiag.heap.hostmem import host_counters
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult
from memdiag.values.units import Tolerance

LEDGER_DRIFT = 256 * 1024
"""Growth of malloc'd bytes since the last refresh that triggers the next one (less
when the tolerance is small: at most a quarter of it).  Storages the ledger does not
know count as created since baseline when a later check's gate trips and the census
runs, so they are kept under this bound."""
MAPPED_DRIFT = 4 * 1024**2
"""The same for memory mapped outside malloc (shared-memory and file-backed tensors),
which also grows by Python's own 1 MiB object arenas as pytest keeps its reports: a
refresh per arena would be a heap walk every few hundred tests."""

__all__ = ["LEDGER_DRIFT", "MAPPED_DRIFT", "CheckSeries"]


class CheckSeries:
    """Starts and checks trackers that share one storage ledger."""

    def __init__(self, selection: Selection, *, record_alloc_stacks: bool = False) -> None:
        self.selection = selection
        self.record_alloc_stacks = record_alloc_stacks
        self.ledger = StorageLedger()
        self._stale = True
        self._at_refresh: dict[str, DeviceReading] = {}
        self._previous: CheckResult | None = None
        """The last check when it passed on counters alone: the next baseline takes its
        final readings where the counters have not moved since (never after a refresh:
        whatever makes the ledger stale makes them stale too)."""

    @property
    def stale(self) -> bool:
        """The next baseline refreshes the ledger (first test, wider fixture, leak)."""
        return self._stale

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
        tracker = Tracker(
            device=self.selection,
            tolerance=tolerance,
            settle=settle,
            ledger=self.ledger,
            record_alloc_stacks=self.record_alloc_stacks,
            collect_at_start=False,
            account_clean=False,
            name=name,
        )
        with tracker.spending():
            refreshed = self._stale or self._host_drifted(tracker)
            cpu = "cpu" in self.selection.devices
            if refreshed and cpu:  # the CPU gate sizes its baseline from the ledger
                self.ledger.refresh()
            previous, self._previous = self._previous, None
            tracker.start(previous=None if refreshed else previous)
            if refreshed and not cpu:
                if _nothing_allocated(tracker.baseline):
                    # No storage lives on the checked devices: an empty ledger is
                    # exact, and the first test of a suite needs no heap walk.
                    self.ledger.clear()
                else:
                    self.ledger.refresh()
            if refreshed:
                self._stale = False
        if refreshed:
            self._at_refresh = dict(tracker.baseline)
        return tracker

    def _host_drifted(self, tracker: Tracker) -> bool:
        """The host counters grew since the ledger's refresh by more than the bound."""
        if "cpu" not in self.selection.devices:
            return False
        then = self.ledger.counters
        now = host_counters()
        if then is None or now is None:
            return now is not None
        slack = min(tracker.gate_slack() // 4, LEDGER_DRIFT)
        return (
            now.malloc_in_use - then.malloc_in_use > slack
            or now.mapped_other - then.mapped_other > max(slack, MAPPED_DRIFT)
        )

    def check(self, tracker: Tracker) -> CheckResult:
        """``tracker.check()``, noting whether the ledger needs a refresh afterwards."""
        result = tracker.check()
        walked, tracker.walked = tracker.walked, None
        if result.leaked:
            self._stale = True
            return result
        if result.cheap and not result.phases:
            self._previous = result
        if walked is not None:
            # The gate tripped and the check walked the heap anyway: that walk is the
            # refresh the moved counters call for (no second walk at the next start).
            ledger = self.ledger
            ledger.refs, ledger.strong_keys, ledger.counters = (
                walked.refs,
                walked.strong_keys,
                walked.counters,
            )
            self._stale = False
            self._at_refresh = {check.device: check.final for check in result.devices}
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


def _nothing_allocated(readings: Mapping[str, DeviceReading]) -> bool:
    """Every device's allocator counts no live bytes (so no storage of its allocator
    lives there).  Tensors over memory torch did not allocate (``from_blob``, DLPack)
    are not counted: one alive at such a baseline would be named as new if a later
    check of the same ledger walks the heap."""
    return all(reading.allocated == 0 for reading in readings.values())

"""The phase tracker: baseline, phases, and the final check.

The check is built so that its passing path costs almost nothing:

1. read the counters (allocator statistics, driver readings); if every device is back
   within tolerance and ``gc.freeze()`` froze nothing new, pass at once;
2. otherwise settle: ``gc.collect()``, synchronise, drop framework workspaces
   (cuBLAS), and poll with backoff until memory is back or ``settle`` seconds pass
   (memory released lazily, as ROCm does after shutdown, is waited for, not blamed);
3. only then walk the heap once (frozen objects included) and classify what remains.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from memdiag.backends.base import BackendUnavailable
from memdiag.backends.registry import Selection, select
from memdiag.check.accounting import account_devices
from memdiag.check.classify import Assessment, assess, classify, to_account
from memdiag.check.interpreter import widen
from memdiag.check.settle import SettleOutcome, poll_until_settled, settle_clock
from memdiag.check.signals import deferred_signals
from memdiag.heap.census import Census, StorageLedger, ledger_deaths, new_storage_bytes, take_census
from memdiag.heap.hostmem import HostCounters, host_counters, host_ram_total, moved
from memdiag.processes.distributed import (
    GroupState,
    process_group_findings,
    process_group_state,
)
from memdiag.processes.proctree import process_tree
from memdiag.processes.watch import ProcessWatch, without_covered_processes
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult, DeviceCheck, PhaseRecord
from memdiag.values.units import Tolerance, format_bytes, parse_seconds
from memdiag.workers.merge import WorkerReportDir

__all__ = ["Tracker", "active_tracker", "phase", "track"]

DEFAULT_TOLERANCE = Tolerance(bytes=1024**2)
"""Live-tensor growth allowed per device: a leak of a few MiB fails, rounding passes."""
DEFAULT_DRIVER_TOLERANCE = Tolerance(bytes=256 * 1024**2)
"""Driver-level growth allowed (outside PyTorch, other processes).  Measured on an
H200 (CUDA 13, torch 2.11): the first matmul creates a cuBLAS handle that takes
66 MiB outside PyTorch for the life of the process, and lazily loaded kernel
modules add a few MiB more; an NCCL communicator or a leaked worker is far larger."""
DEFAULT_SETTLE = 1.0

_monotonic = time.monotonic
_perf_counter = time.perf_counter
_sleep = time.sleep
"""Captured at import: a program that replaces ``time.monotonic`` or ``time.sleep``
(a fake clock in its tests) must not make the settle loop spin forever."""

_ACTIVE: list[Tracker] = []
_ACTIVE_LOCK = threading.Lock()


def active_tracker() -> Tracker | None:
    """The innermost running tracker, or ``None``."""
    return _ACTIVE[-1] if _ACTIVE else None


class _NullPhase:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def phase(name: str) -> Any:
    """Mark the start of phase ``name`` in the active tracker; a no-op when none runs.

    Works as a plain call (the phase lasts until the next one) or as a context
    manager (``with memdiag.phase("infer"): ...`` ends it on exit).  Engine code can
    call it freely: without a tracker it costs one list lookup.
    """
    tracker = active_tracker()
    if tracker is None:
        return _NullPhase()
    return tracker.phase(name)


@dataclass(frozen=True)
class _OpenPhase:
    name: str
    started: float


class _PhaseHandle:
    def __init__(self, tracker: Tracker, name: str) -> None:
        self._tracker = tracker
        self._name = name

    def __enter__(self) -> _PhaseHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tracker.end_phase(self._name)


class _Spending:
    """``with tracker.spending():`` (a plain class: every check enters it a few times)."""

    __slots__ = ("_t0", "_tracker")

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._t0 = 0.0

    def __enter__(self) -> None:
        tracker = self._tracker
        if not tracker._spending:
            self._t0 = _perf_counter()
        tracker._spending += 1

    def __exit__(self, *exc: object) -> None:
        tracker = self._tracker
        tracker._spending -= 1
        if not tracker._spending:
            tracker.spent_s += _perf_counter() - self._t0


class Tracker:
    """Watches device memory from a baseline through named phases to a final check.

    ``device``: ``auto`` (every accelerator, else CPU tensors), ``cpu``, ``cuda``,
    ``cuda:0,cuda:1``, or a ready :class:`Selection` (tests pass fake backends).
    ``tolerance``: growth allowed per device (a :class:`Tolerance`, or a mapping from
    device name to tolerance with ``"*"`` as the default).  ``settle``: seconds the
    failing path may poll for memory to come back; ``stall``: seconds of unchanged
    readings that end it sooner (default :func:`memdiag.check.settle.stall_window`).
    ``ledger``: storages known to predate the baseline (the pytest plugin shares
    one); without it the tracker
    records the live storages at start, so "created since baseline" is exact.
    ``collect_at_start``: run ``gc.collect()`` before the baseline, so garbage alive
    then (collected later) cannot hide growth; the pytest plugin turns it off to keep
    per-test baselines cheap.  ``watch_processes``: follow this process' children
    (workers still alive after shutdown are leaks).  ``worker_reports``: ask child
    Python processes that call :func:`memdiag.agent.install` to write their own
    report into a directory (``True``: a temporary one) and merge them in.
    ``gate``: on ``cpu``, read the host memory counters (:mod:`memdiag.heap.hostmem`)
    and take the census (a heap walk) only when they moved by more than the tolerance
    or a storage alive at baseline was freed; ``None`` (default) turns it on when a
    shared ``ledger`` is given (a tracker per test) and leaves one-shot trackers exact.
    ``account_clean``: name the buckets of memory outside PyTorch (the CUDA context,
    library handles) when the check passes on its counters too; the first time a
    device is accounted, its context is measured in a child process (seconds, then
    cached on disk).  A tracker per test turns it off: nobody reads a passing test's
    buckets, and the first test of every suite would pay for the child.
    """

    def __init__(
        self,
        *,
        device: str | Selection = "auto",
        tolerance: Tolerance | Mapping[str, Tolerance] | None = None,
        driver_tolerance: Tolerance | None = None,
        settle: float = DEFAULT_SETTLE,
        stall: float | None = None,
        ledger: StorageLedger | None = None,
        analyze: bool = True,
        record_alloc_stacks: bool = False,
        collect_at_start: bool = True,
        watch_processes: bool = True,
        worker_reports: bool | str | os.PathLike[str] = False,
        gate: bool | None = None,
        account_clean: bool = True,
        name: str = "",
    ) -> None:
        settle = parse_seconds(settle)  # nan and inf would poll forever
        self._device_spec = device
        self._tolerance = tolerance
        self._driver_tolerance = driver_tolerance or DEFAULT_DRIVER_TOLERANCE
        self.settle_s = float(settle)
        self.stall_s = stall
        self.settle_outcome: SettleOutcome | None = None
        """How the last settle ended (``None``: the check did not need one)."""
        self._own_ledger = ledger is None
        self._ledger = ledger
        self._gate_wanted = (ledger is not None) if gate is None else gate
        self._account_clean = account_clean
        self._gate_base: HostCounters | None = None
        self._gate_deaths = 0
        self.analyze = analyze
        self.record_alloc_stacks = record_alloc_stacks
        self.collect_at_start = collect_at_start
        self.name = name
        self.selection: Selection | None = None
        self.baseline: dict[str, DeviceReading] = {}
        self.phases: list[PhaseRecord] = []
        self._open: _OpenPhase | None = None
        self._baseline_freeze = 0
        self.gate_reason: str | None = None
        """Why the last gated CPU reading had to walk the heap (``None``: it did not)."""
        self.walked: StorageLedger | None = None
        """The storages alive at the last CPU walk a tripped gate made (shared ledger)."""
        self._started = False
        self._start_notices: list[str] = []
        self.spent_s = 0.0
        """Seconds spent measuring: the baseline, phases, readings and the check, and
        what :class:`~memdiag.check.series.CheckSeries` and
        :class:`~memdiag.check.exclusion.Exclusion` do for this tracker."""
        self._spending = 0
        self._tree_pids: frozenset[int] = frozenset()
        self.result: CheckResult | None = None
        self._template: CheckResult | None = None
        """A clean result this check may repeat (see :meth:`_same_as_baseline`)."""
        self._procs = ProcessWatch() if watch_processes else None
        self._groups_at_start = GroupState()
        self._workers = (
            WorkerReportDir(None if worker_reports is True else worker_reports)
            if worker_reports
            else None
        )

    # -- lifecycle -----------------------------------------------------------------
    def spending(self) -> _Spending:
        """Count the time inside into :attr:`spent_s` (the outermost use counts)."""
        return _Spending(self)

    def start(self, *, previous: CheckResult | None = None) -> Tracker:
        """Take the baseline and become the active tracker.

        ``previous``: the last check of a series when it passed on its counters alone
        (no phases).  Where each backend vouches that its counters still equal that
        check's final readings (``recheck``), they are the baseline and no device is
        read again; and when that check had no findings, this one repeats its verdict
        if its counters still equal the baseline at the end (see
        :meth:`_same_as_baseline`)."""
        with self.spending():
            return self._start(previous)

    def _start(self, previous: CheckResult | None = None) -> Tracker:
        if self._started:
            raise RuntimeError("this tracker has already started")
        spec = self._device_spec
        self.selection = spec if isinstance(spec, Selection) else select(spec)
        if self.collect_at_start:
            gc.collect()
        if self._own_ledger:
            self._ledger = StorageLedger()
            self._ledger.refresh()
        counters = host_counters() if self.gated else None
        if self.record_alloc_stacks:
            from memdiag.heap.alloc_stacks import start_recording

            self._start_notices.extend(start_recording(self.selection.devices))
        self._start_notices.extend(self._tolerance_notices())
        self._baseline_freeze = gc.get_freeze_count()
        for device in self.selection.devices:
            for backend in self.selection.readers(device):
                # Settle at the baseline too: workspaces the framework keeps (cuBLAS)
                # are freed now, so freeing them while settling later cannot hide growth.
                _safe(functools.partial(backend.settle, baseline=True), device)
                _safe(backend.reset_peak, device)
        if counters is not None:
            self._gate_base = counters
            self._gate_deaths = ledger_deaths()
        reused = None
        if previous is not None and not self.gated:
            reused = self._unchanged({check.device: check.final for check in previous.devices})
            if reused is not None and not previous.findings:
                self._template = previous
        self.baseline = self._with_pools(
            reused or self._read(gated=True, baseline=True), always=True
        )
        self._tree_pids = self._tree_for(self.baseline)
        if self._procs is not None:
            self._procs.start(self.baseline)
        self._groups_at_start = process_group_state()
        if self._workers is not None:
            self._workers.activate()
        self._started = True
        with _ACTIVE_LOCK:
            _ACTIVE.append(self)
        return self

    def _deactivate(self) -> None:
        with _ACTIVE_LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)

    def close(self) -> None:
        """Stop being active and drop every reference the tracker holds."""
        self._deactivate()
        if self._workers is not None:
            self._workers.close()
        if self._own_ledger and self._ledger is not None:
            self._ledger.clear()
        if self.record_alloc_stacks and self.selection is not None:
            from memdiag.heap.alloc_stacks import stop_recording

            stop_recording()

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.result is None:
                self.check()
        finally:
            self.close()

    # -- readings and phases ---------------------------------------------------------
    @property
    def devices(self) -> tuple[str, ...]:
        return self.selection.devices if self.selection else ()

    @property
    def ledger(self) -> StorageLedger:
        """The storages known to predate the baseline (shared, or the tracker's own)."""
        if self._ledger is None:
            self._ledger = StorageLedger()
        return self._ledger

    def rebaseline(self, readings: Mapping[str, DeviceReading]) -> None:
        """Replace the baseline of the devices in ``readings`` (memory that is not ours:
        :class:`memdiag.check.exclusion.Exclusion` computes it)."""
        for device, reading in readings.items():
            if device in self.baseline:
                self.baseline[device] = reading

    def read(self) -> dict[str, DeviceReading]:
        """One reading of every device, merged across backends (on ``cpu``: a census)."""
        with self.spending():
            return self._read()

    def _read(self, *, gated: bool = False, baseline: bool = False) -> dict[str, DeviceReading]:
        """``gated``: on ``cpu`` with the gate on, the host counters stand in for the
        census (``allocated`` unknown) unless they moved; the check and the baseline
        read this way, phases and callers of :meth:`read` get the census."""
        assert self.selection is not None, "start() the tracker first"
        readings: dict[str, DeviceReading] = {}
        for device in self.selection.devices:
            if device == "cpu" and gated and self._gate_base is not None:
                gated_reading = self._gated_cpu(baseline)
                if gated_reading is None and not baseline and not self._own_ledger:
                    gated_reading = self._walked_cpu()
                if gated_reading is not None:
                    readings[device] = gated_reading
                    continue
            merged: DeviceReading | None = None
            for backend in self.selection.readers(device):
                try:
                    reading = backend.read(device)
                except BackendUnavailable:
                    continue
                merged = reading if merged is None else merged.merged(reading)
            readings[device] = merged or DeviceReading(device=device, time=_monotonic())
        return readings

    def _unchanged(self, previous: Mapping[str, DeviceReading]) -> dict[str, DeviceReading] | None:
        """``previous`` where every backend of every device says its counters did not
        move since (``recheck``), with the time of now and what the backends read
        meanwhile that does not change the verdict (the peaks); else ``None``."""
        assert self.selection is not None
        now = _monotonic()
        readings: dict[str, DeviceReading] = {}
        for device in self.selection.devices:
            reading = previous.get(device)
            readers = self.selection.readers(device)
            if reading is None or not readers:
                return None
            changes: dict[str, Any] = {"time": now}
            for backend in readers:
                recheck = getattr(backend, "recheck", None)
                try:
                    held = recheck(device, reading) if callable(recheck) else None
                except Exception:  # noqa: BLE001 - a fresh reading says what is wrong
                    return None
                if held is None:
                    return None
                changes.update(held)
            readings[device] = reading.with_values(**changes)
        return readings

    def _same_as_baseline(self, t0: float) -> CheckResult | None:
        """The fast lane of a series' passing check: the baseline was the last clean
        check's final readings (``previous``, no findings) and every backend
        says its counters still equal them, so the readings, the assessment and the
        verdict are that check's again.  Only the peaks (read in the same calls), the
        times and what no counter shows are looked at anew: ``gc.freeze()``, child
        processes, process groups.  ``None``: take the full path."""
        template = self._template
        if (
            template is None
            or self.selection is None
            or self.phases
            or self.gated
            or gc.get_freeze_count() > self._baseline_freeze
        ):
            return None
        finals = self._unchanged(self.baseline)
        if finals is None or self._census_grew(finals) or self._processes_pending(finals):
            return None
        if self._procs is not None and self._procs.findings(finals, observed=True):
            return None
        if process_group_findings(self._groups_at_start):
            return None
        devices = tuple(
            DeviceCheck(
                device=device,
                baseline=self.baseline[device],
                final=finals[device],
                allowance=self.allowance(device, finals[device].total),
                driver_allowance=self._driver_tolerance.allowance(finals[device].total),
            )
            for device in self.selection.devices
        )
        analysis = dict(template.analysis)
        if self._procs is not None:
            analysis["processes"] = self._procs.to_json()
        result = CheckResult(
            leaked=False,
            devices=devices,
            phases=(),
            findings=(),
            cheap=True,
            settle_s=template.settle_s,
            elapsed_s=_perf_counter() - t0,
            notices=tuple(self.selection.notices) + tuple(self._start_notices),
            analysis=analysis,
        )
        self.result = result
        return result

    @property
    def gated(self) -> bool:
        """Whether the CPU reading goes through the host counters (see ``gate``)."""
        devices = self.selection.devices if self.selection is not None else ()
        return self._gate_wanted and "cpu" in devices

    def gate_slack(self) -> int:
        """Bytes the host counters may move before the CPU census must run."""
        return self.allowance("cpu", None)

    def _gated_cpu(self, baseline: bool) -> DeviceReading | None:
        """The CPU reading from the host counters, or ``None`` when a census must run.

        At the baseline, ``allocated`` is the bytes of the ledger's live CPU storages
        (the ledger was refreshed within a fraction of the tolerance); later, it is
        unknown while the counters stay within the tolerance and no storage alive at
        baseline was freed."""
        base = self._gate_base
        now = base if baseline else host_counters()
        if base is None or now is None or self._ledger is None:
            return None
        extra: dict[str, Any] = {"host": now.to_json()}
        if baseline:
            allocated: int | None = self._ledger.live_bytes("cpu")
            extra["census"] = "storages of the ledger (host counters gate the check)"
        else:
            deaths = ledger_deaths() - self._gate_deaths
            reason = moved(base, now, self.gate_slack())
            if reason is None and deaths:
                reason = f"{deaths} storages alive at an earlier baseline were freed"
            if reason is not None:
                self.gate_reason = reason
                return None
            allocated = None
            extra["census"] = "skipped: host counters within the tolerance since baseline"
            extra["gated"] = True
        return DeviceReading(
            device="cpu",
            sources=("hostmem",),
            allocated=allocated,
            time=time.monotonic(),
            extra=extra,
        )

    def _walked_cpu(self) -> DeviceReading:
        """The CPU reading when the gate tripped on a shared ledger: one walk that sizes
        the live CPU storages and records them all, so that the series can take it as
        its ledger's refresh if the check passes (:attr:`walked`), not walk again."""
        widen()
        fresh = StorageLedger()
        fresh.refresh()
        self.walked = fresh
        return DeviceReading(
            device="cpu",
            sources=("cpu",),
            allocated=fresh.live_bytes("cpu"),
            time=time.monotonic(),
            extra={"census": "storages walked: the host counters moved"},
        )

    def _with_pools(
        self, readings: dict[str, DeviceReading], *, always: bool = False
    ) -> dict[str, DeviceReading]:
        """Add the allocator's split by pool (``extra["pools"]``) where cached memory
        exceeds the tolerance (at baseline: where private pools exist, whatever the
        cache): a private pool (CUDA graph, MemPool) keeps reserved memory that
        ``empty_cache()`` cannot return."""
        assert self.selection is not None
        owners: dict[tuple[int, int], list[str]] | None = None
        for device, reading in readings.items():
            reserved, allocated = reading.reserved, reading.allocated
            if not reserved or allocated is None:
                continue
            if not always and reserved - allocated <= self.allowance(device, reading.total):
                continue
            for backend in self.selection.readers(device):
                pools = getattr(backend, "pools", None)
                found = pools(device) if callable(pools) else None
                if found is not None and always and not found["private"]:
                    break  # a baseline keeps only what private pools hold
                if found is not None:
                    if any(r > a for r, a in found["private"].values()):
                        widen()
                        if owners is None:
                            from memdiag.retainers.pools import live_pools

                            owners = live_pools()
                        found = _mark_owned(found, owners)
                    readings[device] = dataclasses.replace(
                        reading, extra={**reading.extra, "pools": found}
                    )
                    break
        return readings

    def phase(self, name: str) -> _PhaseHandle:
        """End the open phase (if any) and start ``name``."""
        name = _phase_name(name)
        if self._open is not None:
            self.end_phase(self._open.name)
        self._open = _OpenPhase(name, _monotonic())
        return _PhaseHandle(self, name)

    def end_phase(self, name: str | None = None) -> PhaseRecord | None:
        """Record the open phase's end reading and peaks; reset the peak counters."""
        name = None if name is None else _phase_name(name)
        with self.spending():
            return self._end_phase(name)

    def _end_phase(self, name: str | None) -> PhaseRecord | None:
        if self._open is None or (name is not None and self._open.name != name):
            return None
        readings = self.read()
        if self._procs is not None:
            self._procs.phase_end(self._open.name, readings)
        record = PhaseRecord(
            name=self._open.name,
            started=self._open.started,
            ended=_monotonic(),
            readings=tuple(readings.values()),
        )
        self.phases.append(record)
        self._open = None
        assert self.selection is not None
        for device in self.selection.devices:
            for backend in self.selection.readers(device):
                _safe(backend.reset_peak, device)
        return record

    # -- the check -------------------------------------------------------------------
    def allowance(self, device: str, total: int | None) -> int:
        tolerance = self._tolerance
        if isinstance(tolerance, Mapping):
            chosen = tolerance.get(device) or tolerance.get("*") or DEFAULT_TOLERANCE
        else:
            chosen = tolerance or DEFAULT_TOLERANCE
        if total is None and device == "cpu" and chosen.percent:
            total = host_ram_total()  # a percentage on cpu is of the host's RAM
        return chosen.allowance(total)

    def _tolerance_notices(self) -> list[str]:
        """A tolerance that applies to nothing (a per-device one for a device this
        tracker does not check, a percentage on cpu where the RAM size is unknown): say
        so rather than ignore it silently."""
        assert self.selection is not None
        devices = self.selection.devices
        tolerance = self._tolerance
        notices: list[str] = []
        if "cpu" in devices and host_ram_total() is None:
            chosen = (
                (tolerance.get("cpu") or tolerance.get("*"))
                if isinstance(tolerance, Mapping)
                else tolerance
            )
            if chosen is not None and chosen.percent:
                notices.append(
                    f"tolerance {chosen.percent:g}% on cpu: this host's RAM size is unknown, "
                    f"so only {format_bytes(chosen.bytes)} applies"
                )
        if not isinstance(tolerance, Mapping):
            return notices
        unused = [d for d in tolerance if d != "*" and d not in devices]
        return notices + [
            f"tolerance {d}={tolerance[d]} applies to no checked device "
            f"(checked: {', '.join(devices) or 'none'})"
            for d in unused
        ]

    def _assess(self, readings: Mapping[str, DeviceReading]) -> Assessment:
        return assess(
            baseline=self.baseline,
            readings=readings,
            phases=self.phases,
            allowance=lambda d, total: self.allowance(d, total),
            driver_allowance=lambda total: self._driver_tolerance.allowance(total),
            own_pid=os.getpid(),
            tree_pids=self._tree_for(readings),
        )

    def _tree_for(self, readings: Mapping[str, DeviceReading]) -> frozenset[int]:
        """This process' tree, scanned from /proc only when a device lists other PIDs."""
        me = os.getpid()
        if not any(p.pid != me for r in readings.values() for p in r.processes):
            return frozenset({me})
        return self._tree_pids | _tree_pids()

    def check(self) -> CheckResult:
        """The final check: cheap path first, then settle, then classify.

        Signals the program handles in Python (SIGALRM, SIGTERM, ...) that arrive
        meanwhile are held and delivered to its handlers once the check is done, so a
        handler that raises cannot interrupt ``gc.collect()`` or the heap walk."""
        with deferred_signals(), self.spending():
            return self._check()

    def _check(self) -> CheckResult:
        assert self.selection is not None, "start() the tracker first"
        t0 = _perf_counter()
        if self._open is not None:
            self.end_phase()
        same = self._same_as_baseline(t0)
        if same is not None:
            return same
        readings = self._with_pools(self._read(gated=True))
        assessment = self._assess(readings)
        freeze_grew = gc.get_freeze_count() > self._baseline_freeze
        pending = self._processes_pending(readings)  # observes the tree: always called
        if assessment.clean and not freeze_grew and not pending and not self._census_grew(readings):
            return self._finish(readings, assessment, None, cheap=True, settle_s=0.0, t0=t0)
        widen()  # past the counters (pytest's lazy restore: the whole interpreter now)
        readings, assessment, settle_s, workspace = self._settle(readings, assessment)
        # nothing left for a heap walk to explain?
        if assessment.clean and not freeze_grew and not self._census_grew(readings):
            return self._finish(
                readings,
                assessment,
                None,
                cheap=False,
                settle_s=settle_s,
                t0=t0,
                workspace=workspace,
            )
        census: Census | None
        notices: list[str] = []
        try:
            census = take_census(self._ledger, self.selection.devices)
        except Exception as exc:  # noqa: BLE001 - a failed walk still leaves the counters
            census = None
            notices.append(f"heap census failed: {exc}")
        return self._finish(
            readings,
            assessment,
            census,
            cheap=False,
            settle_s=settle_s if assessment.clean else None,
            t0=t0,
            workspace=workspace,
            notices=notices,
        )

    def _census_grew(self, readings: Mapping[str, DeviceReading]) -> bool:
        """Where a census reads a device (CPU tensors), the verdict counts storages
        created since baseline and still alive, not net bytes: freeing a tensor that
        existed at baseline must not hide a new one of the same size.  A CPU reading
        the host counters let through (within the tolerance, no baseline storage
        freed) rules that out without a walk."""
        assert self.selection is not None
        if self._ledger is None:
            return False
        cpu = readings.get("cpu")
        if cpu is not None and cpu.extra.get("gated"):
            return False
        counted = [
            d
            for d in self.selection.devices
            if any(getattr(b, "name", "") == "cpu" for b in self.selection.readers(d))
        ]
        if not counted:
            return False
        widen()
        grown = new_storage_bytes(self._ledger, counted)
        return any(grown.get(d, 0) > self.allowance(d, None) for d in counted)

    def _processes_pending(self, readings: Mapping[str, DeviceReading]) -> bool:
        """Observe child processes; True while one started during tracking is alive
        or its memory is not yet released (those are waited for, then judged)."""
        if self._procs is None:
            return False
        self._procs.observe(readings)
        return self._procs.pending()

    def _settle(
        self, readings: dict[str, DeviceReading], assessment: Assessment
    ) -> tuple[dict[str, DeviceReading], Assessment, float, dict[str, int]]:
        assert self.selection is not None
        start = settle_clock()
        workspace: dict[str, int] = {}
        for device in self.selection.devices:
            before = readings[device].allocated
            for backend in self.selection.readers(device):
                _safe(backend.settle, device)
            after_reading = self._read(gated=True).get(device)
            if before is not None and after_reading and after_reading.allocated is not None:
                freed = before - after_reading.allocated
                if freed > 0 and any(b.name == "torch" for b in self.selection.readers(device)):
                    workspace[device] = freed
        # Freeing framework workspaces is cheap and often enough; a full collection
        # (expensive on large heaps) only when memory is still not back.
        readings = self._with_pools(self._read(gated=True))
        assessment = self._assess(readings)
        pending = self._processes_pending(readings)
        if assessment.clean and not pending:
            elapsed = settle_clock() - start
            self.settle_outcome = SettleOutcome("back", elapsed, 1, self.settle_s, 0.0)
            return readings, assessment, elapsed, workspace
        gc.collect()

        def poll() -> tuple[dict[str, DeviceReading], Assessment, bool]:
            now = self._with_pools(self._read(gated=True))
            return now, self._assess(now), self._processes_pending(now)

        readings, assessment, outcome = poll_until_settled(
            poll, settle_s=self.settle_s, started=start, stall_s=self.stall_s
        )
        self.settle_outcome = outcome
        return readings, assessment, outcome.elapsed_s, workspace

    def _finish(
        self,
        readings: dict[str, DeviceReading],
        assessment: Assessment,
        census: Census | None,
        *,
        cheap: bool,
        settle_s: float | None,
        t0: float,
        workspace: Mapping[str, int] | None = None,
        notices: list[str] | None = None,
    ) -> CheckResult:
        assert self.selection is not None
        accounting = (
            account_devices(readings, to_account(assessment))
            if self._account_clean or not cheap
            else {}
        )
        findings = classify(
            assessment=assessment,
            census=census,
            workspace=workspace or {},
            freeze_before=self._baseline_freeze,
            freeze_now=gc.get_freeze_count(),
            accounting=accounting,
        )
        all_notices = list(self.selection.notices) + self._start_notices + list(notices or [])
        analysis: dict[str, Any] = {}
        if accounting:
            analysis["accounting"] = {d: acc.to_json() for d, acc in accounting.items()}
        if census is not None and self.analyze and any(f.storages and f.is_leak for f in findings):
            # Loaded on the first leak only: a passing suite never pays its import.
            from memdiag.retainers.attach import attach_retainers

            leaking = {f.device for f in findings if f.is_leak} & set(assessment.allowances)
            findings, analysis, extra = attach_retainers(
                findings,
                record_alloc_stacks=self.record_alloc_stacks,
                keep_over=min((assessment.allowances[d] for d in leaking), default=None),
            )
            all_notices.extend(extra)
        outcome = self.settle_outcome
        if outcome is not None:
            analysis["settle"] = outcome.to_json()
            if outcome.ended != "back":
                all_notices.append(outcome.describe())
        if self.gate_reason is not None:
            analysis["cpu_gate"] = self.gate_reason
        if self._procs is not None:
            # check() observed the tree with these readings moments ago: no rescan.
            process_findings = self._procs.findings(readings, observed=True)
            findings = without_covered_processes(findings, process_findings) + process_findings
            analysis["processes"] = self._procs.to_json()
        findings = list(findings) + process_group_findings(self._groups_at_start)
        if self._workers is not None:
            findings += self._workers.findings()
        findings.sort(key=lambda f: (not f.is_leak, -f.nbytes))
        devices = tuple(
            DeviceCheck(
                device=device,
                baseline=self.baseline[device],
                final=readings[device],
                allowance=assessment.allowances[device],
                driver_allowance=assessment.driver_allowances[device],
            )
            for device in self.selection.devices
        )
        result = CheckResult(
            leaked=any(f.is_leak for f in findings),
            devices=devices,
            phases=tuple(self.phases),
            findings=tuple(findings),
            cheap=cheap,
            settle_s=settle_s,
            elapsed_s=_perf_counter() - t0,
            notices=tuple(all_notices),
            analysis=analysis,
        )
        self.result = result
        return result


def _phase_name(name: object) -> str:
    """Phase names are text in every report: ``phase(3)`` is phase ``"3"``."""
    if isinstance(name, str):
        return name
    try:
        return str(name)
    except Exception:  # noqa: BLE001 - a name whose __str__ raises
        return f"<{type(name).__name__} object>"


def _mark_owned(
    pools: dict[str, Any], owners: Mapping[tuple[int, int], list[str]]
) -> dict[str, Any]:
    """Private pools without a live owner are freed by ``empty_cache()``: their free
    bytes count as returnable; the others get their owners' type names."""
    returnable = int(pools["returnable"])
    private: dict[str, Any] = {}
    for name, (reserved, allocated, *_) in pools["private"].items():
        first, _, second = name.partition(",")
        owned = owners.get((int(first), int(second)))
        if owned:
            private[name] = [reserved, allocated, sorted(set(owned))]
        else:
            returnable += reserved - allocated
    return {"returnable": returnable, "private": private}


def _safe(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BackendUnavailable:
        pass


def _tree_pids() -> frozenset[int]:
    return frozenset(process_tree())


@contextmanager
def track(
    *,
    device: str | Selection = "auto",
    tolerance: Tolerance | Mapping[str, Tolerance] | None = None,
    settle: float = DEFAULT_SETTLE,
    **options: Any,
) -> Iterator[Tracker]:
    """``with memdiag.track() as t: ...``; ``t.result`` holds the check afterwards."""
    tracker = Tracker(device=device, tolerance=tolerance, settle=settle, **options)
    with tracker:
        yield tracker

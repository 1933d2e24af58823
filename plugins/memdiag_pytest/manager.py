"""The stateful part of the plugin: adapts pytest's test lifecycle to memdiag's tracker.

Registered only when the check is on (``--gpu-leak-check``, or a test carries the
``gpu_leak_check`` marker), in every process that runs tests (not in an xdist
controller).  One :class:`~memdiag_pytest.runs.CheckRun` is one tracker's life: a test
(``function`` scope), or a module / the session (``module`` / ``session`` scope).

Baseline.  A run's baseline is taken right before the first fixture of the run's
scope or narrower is set up (or when the test's call starts, if there is none), so
fixtures of wider scope are already alive and are not blamed on the run.  A wider
fixture set up lazily after the baseline (requested by a function fixture, or with
``request.getfixturevalue``) is measured around its setup, and what it allocated is
added to the baseline: it belongs to the fixture.  A test opted out inside a module
or session run is excluded the same way.

The shared :class:`~memdiag.heap.census.StorageLedger` (storages alive before a baseline)
is refreshed only when needed: at the first baseline, after a fixture of wider
scope was set up, after a leak, and when memory kept by passing tests drifted by
more than half the tolerance since the last refresh.  That heap walk is what makes
per-test baselines expensive; the passing path reads counters only.

Reports.  The check runs when the run's last teardown is done, inside
``pytest_runtest_makereport`` for the teardown.  The plugin runs the test protocol
with logging deferred (as pytest-forked does in its child), so a leak can fail the
test's own call report; a test that already failed on its own keeps that failure,
and the leak is reported separately on its teardown report (an error), as is the
leak of a module or session run, which blames that scope's fixtures
(:mod:`memdiag_pytest.reporting`).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from memdiag.backends.registry import Selection
from memdiag.check.exclusion import Exclusion
from memdiag.check.interpreter import InterpreterState, widen
from memdiag.check.peaks import PeakViolation, peak_violations
from memdiag.check.series import CheckSeries
from memdiag.check.tracker import Tracker
from memdiag.report.known import apply_known
from memdiag.values.result import CheckResult

from . import reporting
from .isolation import CUDA_REFUSAL, Isolation, cuda_initialized, wants_fork
from .marks import closest, options_from
from .options import MemdiagWarning, Settings, child_events_path
from .runs import (
    RANK,
    CheckRun,
    TestState,
    drop_test_references,
    first_wider_node_torn_down,
    unit_of,
)

__all__ = ["LeakCheckManager"]


class LeakCheckManager:
    """Checks tests for device memory that did not come back."""

    def __init__(
        self,
        config: pytest.Config,
        settings: Settings,
        selection: Selection,
        *,
        only_marked: bool,
    ) -> None:
        self.config = config
        self.settings = settings
        self.selection = selection
        self.only_marked = only_marked
        self.scope = "function" if only_marked else settings.scope
        self.series = CheckSeries(selection, record_alloc_stacks=settings.alloc_stacks)
        self._pid = os.getpid()
        self._interpreter = InterpreterState()
        self._interpreter_changed = False
        """The last check had to put the interpreter back (see :meth:`_start_tracker`)."""
        self._run: CheckRun | None = None
        self._test: TestState | None = None
        self._deferring = False
        self._peak_bound_said = False
        self._excluding = 0
        self.isolation = (
            None if child_events_path() is not None else Isolation(config, settings.isolate)
        )
        # JUnit properties only where a JUnit file is written (a spawned child's parent
        # may write one: the child cannot tell, so it always attaches them).
        self._junit = bool(getattr(config.option, "xmlpath", None)) or self.isolation is None

    # -- which tests ---------------------------------------------------------------------------
    def _mark_of(self, node: pytest.Item | pytest.Collector) -> pytest.Mark | None:
        return closest(node)

    def _wanted(self, item: pytest.Item) -> bool:
        mark = self._mark_of(item)
        if mark is not None and mark.name == "no_gpu_leak_check":
            return False
        return not self.only_marked or mark is not None

    def tracker_for(self, item: pytest.Item) -> Tracker | None:
        test = self._test
        if test is None or test.item is not item or test.run is None:
            return None
        return test.run.tracker

    # -- the protocol: log reports only once the check has run ---------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Refuse fork isolation before any test runs when CUDA is already initialised."""
        isolation = self.isolation
        if isolation is None or not cuda_initialized():
            return
        if any(isolation.mode_for(item) == "fork" for item in session.items):
            where = "by a conftest, plugin or module imported before the first test"
            raise pytest.UsageError("memdiag: " + CUDA_REFUSAL.format(where=where))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        """pytest's own protocol, with each report logged only after the teardown's check;
        or the test run in a child process (``--gpu-leak-isolate``, ``--forked``), whose
        reports are logged here.  Runs before pytest-forked's, which it replaces."""
        mode = self.isolation.mode_for(item) if self.isolation is not None else None
        if mode is not None:
            assert self.isolation is not None
            self.isolation.run(item, nextitem, mode)
            return True
        if self.scope == "function" and not self._wanted(item) and not wants_fork(item):
            # What an unchecked test allocates is not "created since baseline" for
            # the next checked one: re-read the storages alive before its baseline.
            self.series.mark_stale()
            return None
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        self._deferring = True
        try:
            reports = runtestprotocol(item, nextitem=nextitem, log=False)
        finally:
            self._deferring = False
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    # -- setup ---------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            self._begin(item)
            error = None
        except ValueError as exc:  # a bad marker argument: fail the setup, saying why
            self._test = None
            self._close_run()
            error = str(exc)
        result = yield
        if error is not None:
            pytest.fail(error, pytrace=False)
        return result

    def _begin(self, item: pytest.Item) -> None:
        deferred = self._deferring or os.getpid() != self._pid
        wanted = self._wanted(item)
        options = options_from(
            m if (m := item.get_closest_marker("gpu_leak_check")) and wanted else None
        )
        if self.scope == "function":
            run = (
                CheckRun(
                    scope="function",
                    key=item.nodeid,
                    label="the test",
                    tolerance={"*": options.tolerance}
                    if options.tolerance
                    else self.settings.tolerance,
                    settle=self.settings.settle if options.settle is None else options.settle,
                )
                if wanted
                else None
            )
            self._close_run()
            self._run = run
            self._test = TestState(item, run, wanted, options, deferred)
            return
        run = self._unit_run(item)
        test = TestState(item, run, wanted and not run.disabled, options, deferred)
        self._test = test
        if run.disabled:
            return
        if not wanted:
            if run.tracker is not None:
                test.exclusion = Exclusion(run.tracker).start()
            return
        if run.tracker is not None:
            self._open_test_phase(test)

    def _unit_run(self, item: pytest.Item) -> CheckRun:
        key, node, label = unit_of(item, self.scope)
        run = self._run
        if run is not None and run.key == key:
            return run
        self._close_run()
        mark = self._mark_of(node) if node is not None else None
        disabled = mark is not None and mark.name == "no_gpu_leak_check"
        options = options_from(mark if mark is not None and not disabled else None)
        run = CheckRun(
            scope=self.scope,
            key=key,
            label=label,
            tolerance={"*": options.tolerance} if options.tolerance else self.settings.tolerance,
            settle=self.settings.settle if options.settle is None else options.settle,
            disabled=disabled,
        )
        self._run = run
        return run

    def _close_run(self) -> None:
        run, self._run = self._run, None
        if run is not None and run.tracker is not None:
            run.tracker.close()
            run.tracker = None

    def _phases_on(self, test: TestState | None) -> bool:
        """The plugin's own phases (setup / call / teardown, or one per test in a module
        or session run) cost a reading each (a heap walk on CPU; allocator and driver
        calls on an accelerator), so only a ``max_peak`` budget turns them on.  Phases
        the test or engine marks itself are always recorded."""
        return test is not None and test.options.max_peak is not None

    def _say_peak_bound(self, test: TestState | None) -> None:
        """Once a session: where a device has no peak counter, ``max_peak`` sees only
        phase-end values, a lower bound of the peak."""
        uncounted = [d for d in self.selection.devices if d == "cpu"]
        if self._peak_bound_said or not uncounted or test is None:
            return
        self._peak_bound_said = True
        test.item.warn(
            MemdiagWarning(
                f"max_peak on {', '.join(uncounted)}: CPU tensors have no peak counter, so the "
                "budget is compared with the memory at each phase end (setup, call, teardown "
                "and the phases a test marks with gpu_leak_tracker.phase(NAME)), a lower "
                "bound of the peak; a buffer allocated and freed within one phase is not "
                "seen: mark the step that may peak as a phase of its own"
            )
        )

    def _start_tracker(self, run: CheckRun, first_phase: str) -> None:
        if self._interpreter_changed or self.series.stale:
            # The last check found the interpreter changed (a test left os.getpid or a
            # builtin replaced), or something other than tests ran since (the first
            # test, a wider fixture's setup): the baseline is taken in the interpreter
            # the session started with too.  Else the last check found it as captured
            # and only pytest's own reporting ran since: nothing to put back.
            with self._interpreter.restored(lazy=True):
                tracker = self._series_start(run)
        else:
            tracker = self._series_start(run)
        run.tracker = tracker
        test = self._test
        if run.scope == "function":
            if self._phases_on(test):
                tracker.phase(first_phase)
                self._say_peak_bound(test)
        elif test is not None and test.checked:
            self._open_test_phase(test)

    def _series_start(self, run: CheckRun) -> Tracker:
        return self.series.start(tolerance=run.tolerance, settle=run.settle, name=run.key)

    def _open_test_phase(self, test: TestState) -> None:
        run = test.run
        if run is None or run.tracker is None or not self._phases_on(test):
            return
        test.phase_start = len(run.tracker.phases)
        test.phase_name = test.item.name
        run.tracker.phase(test.item.name)

    # -- fixtures ------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        rank = RANK.get(fixturedef.scope, 0)
        run = self._run
        test = self._test
        active = (
            run is not None
            and not run.disabled
            and test is not None
            and test.run is run
            and test.exclusion is None
            and self._excluding == 0
        )
        if not active:
            if rank > 0:
                self.series.mark_stale()
            return (yield)
        assert run is not None
        if rank > run.rank:
            if run.tracker is None:
                self.series.mark_stale()
                return (yield)
            # A wider fixture set up lazily after the baseline: its memory is its own.
            with self._excluded(run.tracker):
                return (yield)
        if 0 < rank and fixturedef.argname not in run.fixtures:
            run.fixtures.append(f"{fixturedef.argname}")
        if run.tracker is None and test is not None and test.checked:
            self._start_tracker(run, "setup")
        return (yield)

    @contextmanager
    def _excluded(self, tracker: Tracker) -> Iterator[None]:
        # Readings and a heap walk at each end (rare, costly anyway): in the interpreter
        # the session started with; the fixture itself runs in the program's.
        self._excluding += 1
        with self._interpreter.restored():
            exclusion = Exclusion(tracker).start()
        try:
            yield
        finally:
            self._excluding -= 1
            with self._interpreter.restored():
                exclusion.end()

    # -- call and teardown ---------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        test = self._test
        if test is not None and test.item is item and test.checked and test.run is not None:
            run = test.run
            if run.tracker is None:
                self._start_tracker(run, "call")
            elif run.scope == "function" and self._phases_on(test):
                run.tracker.phase("call")
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        test = self._test
        if test is not None and test.item is item:
            test.unit_ends = (
                self.scope == "function"
                or nextitem is None
                or unit_of(nextitem, self.scope)[0] != unit_of(item, self.scope)[0]
            )
            run = test.run
            if run is not None and run.tracker is not None and not run.disabled:
                if run.scope == "function" and self._phases_on(test):
                    run.tracker.phase("teardown")
                if test.checked and (run.scope == "function" or test.unit_ends):
                    node = first_wider_node_torn_down(item, nextitem, run.scope)
                    if node is not None:
                        node.addfinalizer(lambda: self._checkpoint(test))
        return (yield)

    def _checkpoint(self, test: TestState) -> None:
        """Runs as the first finalizer of the first wider node torn down: the run's own
        teardown is over, and wider fixtures (which free their memory in their own
        teardown, or are checked in their own scope) have not started theirs."""
        run = test.run
        if run is None or run.tracker is None or run.result is not None:
            return
        drop_test_references(test.item)
        restorer = self._interpreter.restored(lazy=True)
        with restorer:  # as in _finish
            run.result = self._check(run)
        self._interpreter_changed = restorer.changed

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        test = self._test
        if test is None or test.item is not item:
            return report
        if call.when != "teardown":
            test.reports[call.when] = report
            return report
        self._test = None
        try:
            # A test may leave sys.modules["gc"] replaced, builtins None, a recursion
            # limit of 60: the check and its report run in the interpreter the session
            # started with (the test's state is put back after).  What a check that
            # passes on counters does not call is put back only when it goes further.
            restorer = self._interpreter.restored(lazy=True)
            with restorer:
                self._finish(test, report)
            self._interpreter_changed = restorer.changed
        finally:
            if test.run is not None and (test.run.scope == "function" or test.unit_ends):
                self._close_run()
        return report

    def _finish(self, test: TestState, teardown: pytest.TestReport) -> None:
        run = test.run
        if run is None or run.disabled:
            return
        if run.result is None:  # else the checkpoint did it
            drop_test_references(test.item)
        if run.scope == "function":
            if run.tracker is None or not test.checked:
                return
            result = run.result or self._check(run)
            peaks = (
                peak_violations(result.phases, run.tracker.baseline, test.options.max_peak)
                if test.options.max_peak is not None
                else []
            )
            self._report(test, teardown, run, result, peaks, blame=run.label, unit=False)
            return
        if test.exclusion is not None:
            test.exclusion.end()
        test_peaks: list[PeakViolation] = []
        tracker = run.tracker
        if test.checked and tracker is not None and test.phase_name is not None:
            tracker.end_phase(test.phase_name)
            if test.options.max_peak is not None:
                test_peaks = peak_violations(
                    tracker.phases[test.phase_start :], tracker.baseline, test.options.max_peak
                )
        if test_peaks:
            self._report(test, teardown, run, None, test_peaks, blame=run.label, unit=False)
        if test.unit_ends and tracker is not None:
            result = run.result or self._check(run)
            blame = reporting.blame_of(run.scope, run.label, run.fixtures)
            self._report(test, teardown, run, result, [], blame=blame, unit=True)

    def _check(self, run: CheckRun) -> CheckResult:
        assert run.tracker is not None
        return self.series.check(run.tracker)

    # -- reporting -----------------------------------------------------------------------------
    def _report(
        self,
        test: TestState,
        teardown: pytest.TestReport,
        run: CheckRun,
        result: CheckResult | None,
        peaks: list[PeakViolation],
        *,
        blame: str,
        unit: bool,
    ) -> None:
        if peaks or result is None or result.leaks or result.phases or not result.cheap:
            # More than a counting-only entry (signatures, a failure's words, the JSON
            # report's copy of the result): the whole interpreter memdiag found.
            widen()
        if result is not None:  # known leaks (--gpu-leak-known) are reported, not failed
            result = apply_known(result, self.settings.known, test=run.key)
        failure = None
        if peaks or (result is not None and result.leaked):
            width = max(60, self.config.get_terminal_writer().fullwidth - 4)
            verbosity = int(self.config.option.verbose)
            from . import describe  # rich and the renderers: loaded on the first failure

            failure = describe.build_failure(
                result, peaks, blame=blame, width=width, verbosity=verbosity
            )
        properties = reporting.attach_payload(
            teardown,
            result,
            failure,
            peaks,
            scope=run.scope,
            unit=run.key,
            blame=blame,
            overhead_s=run.tracker.spent_s if run.tracker is not None else 0.0,
            full_result=bool(self.settings.json_path),
            junit=self._junit,
        )
        if failure is None:
            return
        target = reporting.failing_report(test.reports, teardown, unit=unit, deferred=test.deferred)
        if target is not teardown:
            target.user_properties.extend(properties)
        reporting.fail(target, failure)

    # -- session end ---------------------------------------------------------------------------
    def pytest_sessionfinish(self) -> None:
        self._close_run()

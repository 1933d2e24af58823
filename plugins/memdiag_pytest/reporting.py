"""A finished check as pytest reports it: the payload, the JUnit properties, the failure.

Runs in the process that checked (a worker under xdist, the child under
``--forked``).  What it attaches to the test reports is plain JSON data
(``report.memdiag`` and ``report.memdiag_failure``), read back on the reporting side
by :class:`~memdiag_pytest.results.ResultsCollector`.  Which report fails: the test's own
call report when reports are deferred and the call passed (a leak is the test's
failure), otherwise the teardown report (an error), combined with the failure it
already carries, if any.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from memdiag.check.peaks import PeakViolation
from memdiag.report.session import junit_properties, session_entry
from memdiag.values.result import CheckResult

from .failure import SECTION, LeakFailure, LeakRepr
from .results import FAILURE, PAYLOAD

__all__ = ["attach_payload", "blame_of", "fail", "failing_report"]


def attach_payload(
    teardown: pytest.TestReport,
    result: CheckResult | None,
    failure: LeakFailure | None,
    peaks: Sequence[PeakViolation],
    *,
    scope: str,
    unit: str,
    blame: str,
    overhead_s: float,
    full_result: bool,
    junit: bool,
) -> list[tuple[str, object]]:
    """Attach the check's JSON-safe payload to ``teardown``; return its JUnit properties.

    ``unit``: the run's key (a node id, or ``"session"``); ``full_result``: the JSON
    report is on, so keep the whole result of a check that did more than read counters
    (settled, walked the heap, recorded phases); ``junit``: ``--junitxml`` is on, so add
    the numbers to ``teardown``'s ``user_properties`` (they are also returned).  A clean
    check on the cheap path carries its per-device numbers when a report reads them
    (JSON report, JUnit), else only what the summary counts.
    """
    if result is None and not peaks:
        return []
    leaked = result is not None and result.leaked
    if leaked:  # the summary's words load rich: only a failing check needs them
        from memdiag.report.summary import held_by, signature
    top = max(result.leaks, key=lambda f: f.nbytes) if result is not None and leaked else None
    entry = session_entry(
        result,
        nodeid=teardown.nodeid,
        unit=unit,
        scope=scope,
        unit_label="" if scope == "function" else f"({blame})",
        summary=failure.message if failure and leaked else "",
        held=f"{top.device}: {held_by(top) or top.kind.heading}" if top else "",
        signature=signature(result) if result is not None and leaked else "",
        peak_failures=[p.describe() for p in peaks],
        overhead_s=overhead_s,
        keep_result=full_result
        and result is not None
        and (not result.cheap or bool(result.phases)),
        numbers=full_result or junit,
    )
    # Plain JSON data: it crosses the xdist and --forked process boundaries.
    setattr(teardown, PAYLOAD, entry.to_json())
    if not junit:
        return []
    properties: list[tuple[str, object]] = list(junit_properties(entry))
    teardown.user_properties.extend(properties)
    return properties


def failing_report(
    reports: Mapping[str, pytest.TestReport],
    teardown: pytest.TestReport,
    *,
    unit: bool,
    deferred: bool,
) -> pytest.TestReport:
    """The report a failed check fails: the test's passing call report when the check
    is the test's own (``unit`` false) and reports were deferred, else ``teardown``."""
    call = reports.get("call")
    own_failure = any(r.failed for r in reports.values())
    if (
        not unit
        and deferred
        and call is not None
        and call.passed
        and not hasattr(call, "wasxfail")
        and not own_failure
    ):
        return call
    return teardown


def fail(report: pytest.TestReport, failure: LeakFailure) -> None:
    """Fail ``report`` with ``failure`` (or add it to the failure it already has)."""
    data = failure.to_json()
    if report.failed:
        data["combined"] = True
        report.longrepr = failure.combined_with(str(report.longrepr))
    else:
        report.outcome = "failed"
        path, lineno, _ = report.location
        report.longrepr = LeakRepr(failure, path, (lineno or 0) + 1)
    if failure.section:
        report.sections.append((SECTION, failure.section))
    setattr(report, FAILURE, data)


def blame_of(scope: str, label: str, fixtures: Sequence[str]) -> str:
    """What a module or session run's leak is blamed on: the teardown of the wider
    fixtures set up inside the run, or the run's tests when there were none."""
    names = ", ".join(f"'{name}'" for name in fixtures)
    what = f"{scope}-scoped" if scope == "module" else "wider-scoped"
    if not names:
        return f"the tests of {label} (no {what} fixtures) finished"
    plural = "s" if len(fixtures) > 1 else ""
    return f"the teardown of {what} fixture{plural} {names} of {label}"

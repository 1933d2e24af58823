"""The pytest session report: one versioned memdiag report for a whole test run.

``pytest --gpu-leak-check --gpu-leak-json=FILE`` writes it; ``memdiag report``
renders it, ``memdiag merge`` combines the reports of several CI shards, and
``memdiag compare`` diffs a PR's against its base's (:mod:`memdiag.report.gate`).
It is documented by ``memdiag/report/schema.json`` next to the ``memdiag run``
report: same ``schema_version``, told apart by ``"report": "pytest-session"``.

Per checked test (or module / session unit under wider scopes) it keeps the
numbers CI dashboards plot, per device, in bytes over the test's baseline: the
peak, the end (at the final check) and what leaked; the test's leaks by signature
(:class:`~memdiag.report.known.LeakRecord`); and the full check result for tests
that leaked, carried a known leak or went over a ``max_peak`` budget.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from memdiag.report.base import write_report
from memdiag.report.known import LeakRecord, known_records, leak_records
from memdiag.values.result import SCHEMA_VERSION, CheckResult
from memdiag.values.units import format_bytes
from memdiag.values.validate import LEGACY_SESSION_SCHEMA

__all__ = [
    "SESSION_REPORT",
    "DeviceNumbers",
    "SessionReport",
    "TestEntry",
    "device_numbers",
    "is_session_data",
    "junit_properties",
    "merge_sessions",
    "session_entry",
    "write_session",
    "write_session_report",
]

SESSION_REPORT = "pytest-session"
"""The ``report`` field of a session report."""
_LEGACY_SCHEMA = LEGACY_SESSION_SCHEMA


@dataclass(frozen=True)
class DeviceNumbers:
    """One device of one test, in bytes over the test's baseline (``None``: unknown).

    ``peak_exact`` says the peak comes from an allocator peak counter; without one
    (CPU tensors) it is the highest reading at phase ends and at the final check, a
    lower bound.  ``leaked``: bytes of the findings that fail the test.  On CPU, a
    check the host counters passed (the census skipped: ``extra["gated"]``) ends at
    ``end`` 0: growth within the tolerance is not sized there.
    """

    device: str
    baseline: int | None
    peak: int | None
    peak_exact: bool
    end: int | None
    leaked: int

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "baseline": self.baseline,
            "peak": self.peak,
            "peak_exact": self.peak_exact,
            "end": self.end,
            "leaked": self.leaked,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceNumbers:
        return cls(
            device=str(data["device"]),
            baseline=_opt_int(data.get("baseline")),
            peak=_opt_int(data.get("peak")),
            peak_exact=bool(data.get("peak_exact", False)),
            end=_opt_int(data.get("end")),
            leaked=int(data.get("leaked") or 0),
        )


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number of bytes")
    return int(value)


def device_numbers(result: CheckResult) -> tuple[DeviceNumbers, ...]:
    """Peak, end and leaked bytes of every device ``result`` checked."""
    out = []
    for check in result.devices:
        base = check.baseline.allocated
        final = check.final.allocated
        if final is None and check.final.extra.get("gated"):
            final = base  # the host counters passed the check: no growth sized
        readings = [r for p in result.phases if (r := p.reading(check.device)) is not None]
        readings.append(check.final)
        counters = [r.peak_allocated for r in readings if r.peak_allocated is not None]
        values = counters + [r.allocated for r in readings if r.allocated is not None]
        if final is not None and check.final.allocated is None:
            values.append(final)
        peak = max(values) - base if values and base is not None else None
        end = final - base if final is not None and base is not None else None
        leaked = sum(f.nbytes for f in result.leaks if f.device == check.device)
        exact = check.final.peak_allocated is not None
        out.append(DeviceNumbers(check.device, base, peak, exact, end, leaked))
    return tuple(out)


@dataclass(frozen=True)
class TestEntry:
    """One checked test (or unit), or a test only checked against a ``max_peak`` budget
    (``checked`` false).  Plain JSON data: it crosses xdist and ``--forked``."""

    __test__ = False  # not a pytest test class

    nodeid: str
    unit: str
    scope: str
    checked: bool
    leaked: bool
    """Some leak fails the test (known leaks within their size do not)."""
    bytes: int
    """Bytes of the leaks that fail the test."""
    summary: str = ""
    devices: tuple[DeviceNumbers, ...] = ()
    leaks: tuple[LeakRecord, ...] = ()
    peak_failures: tuple[str, ...] = ()
    cheap: bool = False
    overhead_s: float = 0.0
    device: str = ""
    """The device of the biggest failing leak."""
    held: str = ""
    """The biggest failing leak's top retainer, one line."""
    signature: str = ""
    """Groups the same bug across tests in the terminal summary."""
    unit_label: str = ""
    result: dict[str, Any] | None = field(default=None, compare=False)
    """The whole check result (``CheckResult.to_json()``), when worth keeping."""

    @property
    def known(self) -> tuple[LeakRecord, ...]:
        return tuple(leak for leak in self.leaks if leak.known)

    def check_result(self) -> CheckResult | None:
        return None if self.result is None else CheckResult.from_json(self.result)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "unit": self.unit,
            "unit_label": self.unit_label,
            "scope": self.scope,
            "checked": self.checked,
            "leaked": self.leaked,
            "bytes": self.bytes,
            "device": self.device,
            "held": self.held,
            "summary": self.summary,
            "signature": self.signature,
            "cheap": self.cheap,
            "overhead_s": self.overhead_s,
            "peak_failures": list(self.peak_failures),
            "devices": [d.to_json() for d in self.devices],
            "leaks": [leak.to_json() for leak in self.leaks],
            "result": self.result,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TestEntry:
        nodeid = str(data["nodeid"])
        raw = data.get("result")
        result = dict(raw) if isinstance(raw, Mapping) else None
        unit = str(data.get("unit") or nodeid)
        devices = tuple(DeviceNumbers.from_json(d) for d in data.get("devices") or ())
        leaks = tuple(LeakRecord.from_json(r) for r in data.get("leaks") or ())
        if "devices" not in data and result is not None:
            # A report of memdiag 0.1 (memdiag-pytest/1): the numbers are in the result.
            checked = CheckResult.from_json(result)
            devices = device_numbers(checked)
            leaks = tuple(leak_records(checked, unit))
        return cls(
            nodeid=nodeid,
            unit=unit,
            scope=str(data.get("scope") or "function"),
            checked=bool(data.get("checked", True)),
            leaked=bool(data.get("leaked", False)),
            bytes=int(data.get("bytes") or 0),
            summary=str(data.get("summary") or ""),
            devices=devices,
            leaks=leaks,
            peak_failures=tuple(str(p) for p in data.get("peak_failures") or ()),
            cheap=bool(data.get("cheap", False)),
            overhead_s=float(data.get("overhead_s") or 0.0),
            device=str(data.get("device") or ""),
            held=str(data.get("held") or ""),
            signature=str(data.get("signature") or ""),
            unit_label=str(data.get("unit_label") or ""),
            result=result,
        )


def session_entry(
    result: CheckResult | None,
    *,
    nodeid: str,
    unit: str,
    scope: str,
    summary: str = "",
    held: str = "",
    signature: str = "",
    unit_label: str = "",
    peak_failures: Sequence[str] = (),
    overhead_s: float = 0.0,
    keep_result: bool = False,
    numbers: bool = True,
) -> TestEntry:
    """The entry for one finished check (``result`` ``None``: only a peak budget was
    checked).  The full result is kept when the test leaked, carried a known leak or
    went over a peak budget, or when ``keep_result`` asks for it.  ``numbers`` false
    (nothing will read the per-device numbers: no JSON report, no JUnit file): a clean
    check without known leaks or peak failures gets what the summary counts only, and
    costs no words or per-device figures on the passing path."""
    if result is None:
        return TestEntry(
            nodeid=nodeid,
            unit=unit,
            scope=scope,
            checked=False,
            leaked=False,
            bytes=0,
            peak_failures=tuple(peak_failures),
            unit_label=unit_label,
        )
    if not numbers and not result.leaked and not peak_failures and not known_records(result):
        return TestEntry(
            nodeid=nodeid,
            unit=unit,
            scope=scope,
            checked=True,
            leaked=False,
            bytes=0,
            cheap=result.cheap,
            overhead_s=overhead_s,
            unit_label=unit_label,
        )
    top = max(result.leaks, key=lambda f: f.nbytes) if result.leaked else None
    keep = keep_result or result.leaked or bool(peak_failures) or bool(known_records(result))
    return TestEntry(
        nodeid=nodeid,
        unit=unit,
        scope=scope,
        checked=True,
        leaked=result.leaked,
        bytes=sum(f.nbytes for f in result.leaks),
        summary=summary or result.summary(),
        devices=device_numbers(result),
        leaks=tuple(leak_records(result, unit)),
        peak_failures=tuple(peak_failures),
        cheap=result.cheap,
        overhead_s=overhead_s,
        device=top.device if top is not None else "",
        held=held,
        signature=signature,
        unit_label=unit_label,
        result=json.loads(json.dumps(result.to_json(), default=str)) if keep else None,
    )


def junit_properties(entry: TestEntry) -> list[tuple[str, str]]:
    """The entry's numbers as JUnit ``<property>`` pairs, for CI dashboards:
    ``memdiag_leaked``, ``memdiag_bytes``, ``memdiag_summary``, and per device
    ``memdiag_<device>_peak_bytes`` / ``_end_bytes`` / ``_leaked_bytes`` (bytes over
    the test's baseline), plus ``memdiag_known_bytes`` when a known leak was seen."""
    if not entry.checked:
        return []
    props = [
        ("memdiag_leaked", "true" if entry.leaked else "false"),
        ("memdiag_bytes", str(entry.bytes)),
        ("memdiag_summary", entry.summary),
    ]
    for numbers in entry.devices:
        for name, value in (
            ("peak", numbers.peak),
            ("end", numbers.end),
            ("leaked", numbers.leaked),
        ):
            if value is not None:
                props.append((f"memdiag_{numbers.device}_{name}_bytes", str(value)))
    known = sum(leak.bytes for leak in entry.known)
    if known:
        props.append(("memdiag_known_bytes", str(known)))
    return props


def _sort_key(entry: TestEntry) -> tuple[str, str, bool]:
    return (entry.nodeid, entry.unit, entry.checked)


@dataclass(frozen=True)
class SessionReport:
    """Every entry of one or more pytest sessions, in node id order."""

    tests: tuple[TestEntry, ...]
    settings: str = ""
    notices: tuple[str, ...] = ()
    context: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tests", tuple(sorted(self.tests, key=_sort_key)))

    @property
    def checked(self) -> tuple[TestEntry, ...]:
        return tuple(e for e in self.tests if e.checked)

    @property
    def leaking(self) -> tuple[TestEntry, ...]:
        return tuple(e for e in self.tests if e.leaked)

    @property
    def with_known(self) -> tuple[TestEntry, ...]:
        return tuple(e for e in self.tests if e.known)

    @property
    def over_peak(self) -> tuple[TestEntry, ...]:
        return tuple(e for e in self.tests if e.peak_failures)

    @property
    def failed(self) -> bool:
        """Some test leaked or went over its peak budget: the session failed on memory."""
        return bool(self.leaking or self.over_peak)

    def summary(self) -> str:
        checked, leaking = self.checked, self.leaking
        units = "scopes" if any(e.scope != "function" for e in checked) else "tests"
        text = f"{len(checked)} {units} checked: {len(leaking)} leaking"
        if leaking:
            text += f" ({format_bytes(sum(e.bytes for e in leaking))})"
        known = self.with_known
        if known:
            size = sum(leak.bytes for e in known for leak in e.known)
            text += f", {len(known)} with known leaks ({format_bytes(size)})"
        if self.over_peak:
            text += f", {len(self.over_peak)} over their max_peak budget"
        return text

    def to_json(self) -> dict[str, Any]:
        checked = self.checked
        return {
            "schema_version": SCHEMA_VERSION,
            "report": SESSION_REPORT,
            "leaked": bool(self.leaking),
            "summary": self.summary(),
            "settings": self.settings,
            "notices": list(self.notices),
            "totals": {
                "checked": len(checked),
                "leaked": len(self.leaking),
                "known": len(self.with_known),
                "over_peak": len(self.over_peak),
                "overhead_s": sum(e.overhead_s for e in self.tests),
            },
            "tests": [e.to_json() for e in self.tests],
            "context": dict(self.context),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionReport:
        if data.get("schema") != _LEGACY_SCHEMA:
            version = data.get("schema_version")
            if version != SCHEMA_VERSION:
                raise ValueError(
                    f"report schema_version {version!r} is not supported "
                    f"(expected {SCHEMA_VERSION})"
                )
            if data.get("report") != SESSION_REPORT:
                raise ValueError(f"not a pytest session report: report {data.get('report')!r}")
        tests = data.get("tests")
        if not isinstance(tests, list):
            raise TypeError('"tests" is not a list')
        context = data.get("context")
        return cls(
            tests=tuple(TestEntry.from_json(t) for t in tests),
            settings=str(data.get("settings") or ""),
            notices=tuple(str(n) for n in data.get("notices") or ()),
            context=dict(context) if isinstance(context, Mapping) else {},
        )


def is_session_data(data: object) -> bool:
    """Whether parsed JSON is a pytest session report (current or memdiag 0.1's)."""
    return isinstance(data, dict) and (
        data.get("report") == SESSION_REPORT or data.get("schema") == _LEGACY_SCHEMA
    )


def write_session(
    path: str | os.PathLike[str],
    entries: Iterable[Mapping[str, Any]],
    *,
    settings: str,
    notices: Sequence[str] = (),
    **context: Any,
) -> SessionReport:
    """Write the session report of ``entries`` (the plugin's payloads) atomically."""
    report = SessionReport(
        tests=tuple(TestEntry.from_json(e) for e in entries),
        settings=settings,
        notices=tuple(notices),
        context={"pid": os.getpid(), "argv": list(sys.argv), **context},
    )
    write_session_report(report, path)
    return report


class _SessionJson:
    def __init__(self, report: SessionReport) -> None:
        self.report = report

    def render(self, file: TextIO) -> None:
        file.write(json.dumps(self.report.to_json(), indent=1, sort_keys=True, default=str) + "\n")


def write_session_report(report: SessionReport, path: str | os.PathLike[str]) -> None:
    """Write ``report`` as JSON, atomically, as every report is written: through a
    symlink (the link stays), in place on a device or FIFO (``/dev/stdout``; a
    ``/dev/full`` device was replaced by a regular file)."""
    write_report(_SessionJson(report), os.fspath(path))


def merge_sessions(reports: Sequence[tuple[str, SessionReport]]) -> SessionReport:
    """One report for several sessions (CI shards, separate xdist runs), as if the
    whole suite had run once.  A test in more than one report keeps the later
    report's entry, with a notice; differing settings are noticed too."""
    by_key: dict[tuple[str, str, bool], tuple[str, TestEntry]] = {}
    notices: list[str] = []
    for source, report in reports:
        for notice in report.notices:
            if notice not in notices:
                notices.append(notice)
        for entry in report.tests:
            key = _sort_key(entry)
            if key in by_key:
                notices.append(
                    f"{entry.nodeid} is in {by_key[key][0]} and {source}; kept {source}'s"
                )
            by_key[key] = (source, entry)
    settings = [report.settings for _, report in reports]
    distinct = list(dict.fromkeys(s for s in settings if s))
    if len(distinct) > 1:
        notices.append(
            "the sessions ran with different settings: "
            + "; ".join(f"{source}: {report.settings}" for source, report in reports)
        )
    return SessionReport(
        tests=tuple(entry for _, entry in by_key.values()),
        settings=distinct[0] if len(distinct) == 1 else " | ".join(distinct),
        notices=tuple(notices),
        context={"merged": [source for source, _ in reports]},
    )

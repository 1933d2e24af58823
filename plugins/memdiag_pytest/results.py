"""Results on the reporting side: the terminal summary and the session's JSON report.

Runs in the process that reports (not in xdist workers); reads only the plain data
that checks attach to test reports (``report.memdiag``), so the same code serves a
plain run, the parent of an isolated test and the controller of ``-n N``.  Imports
only memdiag's value types (never the tracker, torch or rich); the JSON report
imports :mod:`memdiag.report.session` when it is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from memdiag.values.units import format_bytes, plural

from .failure import LeakFailure, LeakRepr

__all__ = ["PAYLOAD", "ResultsCollector"]

PAYLOAD = "memdiag"
"""Report attribute holding a check's JSON-safe summary (survives xdist and --forked)."""
FAILURE = "memdiag_failure"
"""Report attribute holding a failure's message and long repr, to rebuild the repr."""


class ResultsCollector:
    """Collects check payloads from reports; prints the summary; writes the JSON report."""

    def __init__(self, config: pytest.Config, *, json_path: Path | None, header: str) -> None:
        self.config = config
        self.json_path = json_path
        self.header = header
        self.entries: list[dict[str, Any]] = []
        self.notices: list[str] = []

    # -- collecting ----------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        failure = getattr(report, FAILURE, None)
        if isinstance(failure, Mapping) and not isinstance(report.longrepr, LeakRepr):
            if not failure.get("combined"):
                # Came through xdist or --forked as a string: give the short summary
                # its one-line message back.
                path, lineno, _ = report.location
                report.longrepr = LeakRepr(
                    LeakFailure.from_json(dict(failure)), path, (lineno or 0) + 1
                )
        payload = getattr(report, PAYLOAD, None)
        if isinstance(payload, Mapping):
            entry = dict(payload)
            entry.setdefault("nodeid", report.nodeid)
            self.entries.append(entry)

    # -- the JSON report -----------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.json_path is None:
            return
        # Only here, with the report asked for: memdiag (not torch) on the reporting side.
        from memdiag.report.session import write_session

        write_session(self.json_path, self.entries, settings=self.header, notices=self.notices)

    # -- the terminal summary --------------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        checked = [e for e in self.entries if e.get("checked")]
        if not checked and not self.notices:
            return
        tr = terminalreporter
        tr.section("memdiag leak check", sep="=", bold=True)
        for notice in self.notices:
            tr.write_line(f"memdiag WARNING: {notice}", red=True, bold=True)
        leaking = [e for e in checked if e.get("leaked")]
        over_peak = [e for e in self.entries if e.get("peak_failures")]
        units = "scopes" if any(e.get("scope") != "function" for e in checked) else "tests"
        clean = [e for e in checked if not e.get("leaked")]
        cheap = sum(1 for e in checked if e.get("cheap"))
        clean_s = sum(float(e.get("overhead_s", 0.0)) for e in clean)
        failing_s = sum(float(e.get("overhead_s", 0.0)) for e in leaking)
        tr.write_line(
            f"memdiag: checked {len(checked)} {units} ({self.header}): "
            f"{len(clean)} clean, {len(leaking)} leaking"
            + (f", {len(over_peak)} over their max_peak budget" if over_peak else "")
        )
        if clean:
            tr.write_line(
                f"memdiag: overhead {clean_s / len(clean) * 1e3:.2f} ms per clean check "
                f"({cheap} of {len(checked)} on the cheap path, counters only)"
                + (
                    f"; failing checks took {failing_s:.2f} s (settle, census, retainers)"
                    if leaking
                    else ""
                )
            )
        known = [(e, leak) for e in checked for leak in e.get("leaks") or () if leak.get("known")]
        if known:
            size = format_bytes(sum(int(leak.get("bytes", 0)) for _, leak in known))
            tr.write_line(
                f"memdiag: {plural(len(known), 'known leak')} ({size}) reported, not failed "
                f"(--gpu-leak-known): {', '.join(str(e['nodeid']) for e, _ in known[:3])}"
                + (" ..." if len(known) > 3 else "")
            )
        groups: dict[str, list[dict[str, Any]]] = {}
        for entry in leaking:
            groups.setdefault(str(entry.get("signature") or entry["nodeid"]), []).append(entry)
        verbose = self.config.option.verbose > 0
        for sig, entries in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            first = entries[0]
            count = f"{len(entries)} test{'s' if len(entries) > 1 else ''}"
            size = format_bytes(max(int(e.get("bytes", 0)) for e in entries))
            tr.write_line(
                f"  {count:>9}  {size:>10}  {first.get('held', '')}  [signature {sig}]",
                red=True,
            )
            shown = entries if verbose else entries[:3]
            for entry in shown:
                tr.write_line(f"      {entry['nodeid']}  {entry.get('unit_label', '')}".rstrip())
            if len(entries) > len(shown):
                tr.write_line(f"      ...and {len(entries) - len(shown)} more (-v lists all)")
        for entry in over_peak:
            for text in entry["peak_failures"]:
                tr.write_line(f"  over budget  {entry['nodeid']}: {text}", red=True)
        if self.json_path is not None:
            tr.write_line(f"memdiag: JSON report written to {self.json_path}")

"""Results on the reporting side: the terminal summary and the session's JSON report.

Runs in the process that reports (not in xdist workers); reads only the plain data
that checks attach to test reports (``report.memdiag``), so the same code serves a
plain run, the parent of an isolated test and the controller of ``-n N``.  Imports
only memdiag's value types and the interpreter's snapshot (never the tracker, torch or
rich); the JSON report imports :mod:`memdiag.report.session` when it is written.  Like
the checks, it runs in the interpreter the session started with: a test that leaves
``json.dumps`` or a builtin replaced cannot break the spool, the summary or the report.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import pytest

from memdiag.check.interpreter import InterpreterState
from memdiag.values.units import format_bytes, plural

from .failure import LeakFailure, LeakRepr
from .options import CHILD_ENV

__all__ = ["PAYLOAD", "ResultsCollector"]

PAYLOAD = "memdiag"
"""Report attribute holding a check's JSON-safe summary (survives xdist and --forked)."""
FAILURE = "memdiag_failure"
"""Report attribute holding a failure's message and long repr, to rebuild the repr."""

_bool, _float = bool, float
"""Bound at import: a test may leave the builtins replaced, and counting a clean check
(every test) is cheaper with these than with the interpreter put back."""


class ResultsCollector:
    """Collects check payloads from reports; prints the summary; writes the JSON report.

    pytest keeps every test report until the session ends, so a payload is taken off
    its report once read (except in a spawned child, which sends its reports on).
    Clean checks are only counted; the entries the JSON report needs go to a spool
    file, so a long suite's memory does not grow with its length (which would also
    make the check's storage ledger refresh, a heap walk, more often)."""

    def __init__(self, config: pytest.Config, *, json_path: Path | None, header: str) -> None:
        self.config = config
        self.json_path = json_path
        self.json_error: str | None = None
        self.header = header
        self.notices: list[str] = []
        self.checked = 0
        self.cheap = 0
        self.clean_s = 0.0
        self.failing_s = 0.0
        self.wider = False
        """Some check was of a module or the session (the summary says "scopes")."""
        self.leaking: list[dict[str, Any]] = []
        self.over_peak: list[dict[str, Any]] = []
        self.known: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._keep_payloads = not os.environ.get(CHILD_ENV)
        self._spool: IO[str] | None = None
        self._interpreter = InterpreterState()

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
        if not isinstance(payload, Mapping):
            return
        if self._keep_payloads:
            delattr(report, PAYLOAD)
        entry = dict(payload)
        entry.setdefault("nodeid", report.nodeid)
        if self.json_path is None:
            self.add(entry)  # counting only: cheaper than putting the interpreter back
            return
        with self._interpreter.restored(lazy=True):  # json, for the spool
            self.add(entry)

    def add(self, entry: dict[str, Any]) -> None:
        """Count one check's entry (a :meth:`TestEntry.to_json` dict)."""
        if self.json_path is not None:
            if self._spool is None:
                self._spool = tempfile.TemporaryFile("w+", encoding="utf-8", prefix="memdiag-")
            self._spool.write(json.dumps(entry, default=str) + "\n")
        if entry.get("peak_failures"):
            self.over_peak.append(entry)
        if not entry.get("checked"):
            return
        self.checked += 1
        self.wider = self.wider or entry.get("scope") not in (None, "function")
        overhead = _float(entry.get("overhead_s") or 0.0)
        if entry.get("leaked"):
            self.leaking.append(entry)
            self.failing_s += overhead
        else:
            self.clean_s += overhead
            self.cheap += _bool(entry.get("cheap"))
        self.known.extend((entry, leak) for leak in entry.get("leaks") or () if leak.get("known"))

    def entries(self) -> list[dict[str, Any]]:
        """Every entry collected so far (read back from the spool; JSON report only)."""
        spool = self._spool
        if spool is None:
            return []
        spool.seek(0)
        out = [json.loads(line) for line in spool if line.strip()]
        spool.seek(0, os.SEEK_END)
        return out

    # -- the JSON report -----------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.json_path is None:
            return
        with self._interpreter.restored():
            self._write_json(session, self.json_path)

    def _write_json(self, session: pytest.Session, path: Path) -> None:
        # Only here, with the report asked for: memdiag (not torch) on the reporting side.
        from memdiag.report.session import write_session

        try:
            write_session(path, self.entries(), settings=self.header, notices=self.notices)
        except OSError as exc:  # a full disk, /dev/full, a directory removed meanwhile
            self.json_error = f"cannot write --gpu-leak-json {path}: {exc.strerror or exc}"
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def pytest_unconfigure(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    # -- the terminal summary --------------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.checked and not self.notices:
            return
        with self._interpreter.restored():
            self._summary(terminalreporter)

    def _summary(self, tr: pytest.TerminalReporter) -> None:
        tr.section("memdiag leak check", sep="=", bold=True)
        for notice in self.notices:
            tr.write_line(f"memdiag WARNING: {notice}", red=True, bold=True)
        leaking, over_peak = self.leaking, self.over_peak
        units = ("scope" if self.wider else "test") + ("" if self.checked == 1 else "s")
        clean = self.checked - len(leaking)
        tr.write_line(
            f"memdiag: checked {self.checked} {units} ({self.header}): "
            f"{clean} clean, {len(leaking)} leaking"
            + (f", {len(over_peak)} over their max_peak budget" if over_peak else "")
        )
        if clean:
            tr.write_line(
                f"memdiag: overhead {self.clean_s / clean * 1e3:.2f} ms per clean check "
                f"({self.cheap} of {self.checked} on the cheap path, counters only)"
                + (
                    f"; failing checks took {self.failing_s:.2f} s (settle, census, retainers)"
                    if leaking
                    else ""
                )
            )
        known = self.known
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
        if self.json_error is not None:
            tr.write_line(f"memdiag: {self.json_error}", red=True, bold=True)
        elif self.json_path is not None:
            tr.write_line(f"memdiag: JSON report written to {self.json_path}")

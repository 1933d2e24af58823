"""Reports of other processes, merged into one: workers' agents and distributed ranks.

Each worker (:mod:`memdiag.agent`) or rank (``memdiag run --json`` under ``torchrun``)
checks itself and writes a JSON report.  Here they come back together:

- :func:`merge_worker_reports` turns a directory of worker reports into findings for
  the parent's report, each labelled ``worker 1234 (`cmdline`): ...`` or
  ``rank 1 (pid 1234): ...`` and keeping the worker's own retainer chains;
- :func:`merge_results` folds per-rank reports into one :class:`CheckResult` and
  :func:`rank_rows` into the per-rank table of ``memdiag merge``;
- :class:`WorkerReportDir` is the parent's side: a fresh directory, handed to the
  children through ``$MEMDIAG_AGENT_DIR``, read back at the check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memdiag.processes.watch import short_cmdline
from memdiag.values.findings import Finding
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult, DeviceCheck, PhaseRecord
from memdiag.values.validate import (
    ReportFormatError,
    read_report_bytes,
    read_report_data,
    result_from_data,
)
from memdiag.workers.env import ENV_DIR

__all__ = [
    "RankRow",
    "ReportError",
    "WorkerReport",
    "WorkerReportDir",
    "find_reports",
    "load_report",
    "load_reports",
    "merge_results",
    "merge_worker_reports",
    "rank_rows",
    "relabel",
]

_LABEL_CMDLINE = 80


class ReportError(ValueError):
    """A file that is not a readable memdiag JSON report."""


@dataclass(frozen=True)
class WorkerReport:
    """One process' report, with who wrote it."""

    path: Path
    result: CheckResult
    pid: int | None = None
    cmdline: str = ""
    rank: int | None = None
    world_size: int | None = None

    @property
    def label(self) -> str:
        """``rank 1 (pid 1234)``, or ``worker 1234 (`python -m engine.worker`)``."""
        if self.rank is not None:
            return f"rank {self.rank}" + (f" (pid {self.pid})" if self.pid is not None else "")
        command = short_cmdline(self.cmdline, max_len=_LABEL_CMDLINE)
        who = f"worker {self.pid}" if self.pid is not None else f"report {self.path.name}"
        return f"{who} (`{command}`)" if command else who

    @property
    def short_label(self) -> str:
        """A device-name prefix: ``rank1`` or ``pid1234``."""
        if self.rank is not None:
            return f"rank{self.rank}"
        return f"pid{self.pid}" if self.pid is not None else self.path.stem

    @property
    def leaked_bytes(self) -> int:
        return sum(f.nbytes for f in self.result.leaks)


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_report(path: str | os.PathLike[str]) -> WorkerReport:
    """Read one report written by the agent or by ``--json``; :class:`ReportError` if not."""
    source = Path(path)
    try:
        data = read_report_data(source)
        result = result_from_data(data, source)
    except FileNotFoundError:
        raise ReportError(f"report not found: {source}") from None
    except IsADirectoryError:
        raise ReportError(f"{source} is a directory, not a JSON report") from None
    except OSError as exc:
        raise ReportError(f"cannot read {source}: {exc.strerror or exc}") from None
    except ReportFormatError as exc:
        raise ReportError(str(exc)) from None
    context = data.get("context") or {}
    if not isinstance(context, dict):
        context = {}
    cmdline = context.get("cmdline")
    if not isinstance(cmdline, str):
        argv = context.get("argv")
        cmdline = " ".join(map(str, argv)) if isinstance(argv, list) else ""
    return WorkerReport(
        path=source,
        result=result,
        pid=_optional_int(context.get("pid")),
        cmdline=cmdline,
        rank=_optional_int(context.get("rank")),
        world_size=_optional_int(context.get("world_size")),
    )


def _is_merged(path: Path) -> bool:
    try:
        data = json.loads(read_report_bytes(path).decode("utf-8"))
    except (OSError, ValueError, RecursionError, ReportFormatError):
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("context"), dict)
        and ("merged" in data["context"])
    )


def find_reports(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; directories expand to their ``*.json`` files, skipping reports
    that are themselves merges (a ``merged.json`` written next to the ranks')."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found.extend(
                p for p in sorted(path.glob("*.json")) if p.is_file() and not _is_merged(p)
            )
        else:
            found.append(path)
    return found


def load_reports(paths: Iterable[str | os.PathLike[str]]) -> list[WorkerReport]:
    """Every report under ``paths``, ranks first in rank order, then by pid."""
    reports = [load_report(p) for p in find_reports(paths)]
    reports.sort(
        key=lambda r: (
            r.rank is None,
            r.rank if r.rank is not None else 0,
            r.pid if r.pid is not None else 0,
            str(r.path),
        )
    )
    return reports


def relabel(report: WorkerReport) -> list[Finding]:
    """The report's findings, each message prefixed with who it comes from; tensors,
    processes and retainer chains are kept as the worker found them."""
    return [
        dataclasses.replace(finding, message=f"{report.label}: {finding.message}")
        for finding in report.result.findings
    ]


def merge_worker_reports(
    directory: str | os.PathLike[str], *, exclude_pids: Iterable[int] | None = None
) -> list[Finding]:
    """The findings of every worker report (``memdiag-*.json``) in ``directory``.

    ``exclude_pids`` (default: this process) are skipped, so a process that is both a
    worker and a parent does not count itself twice.  A missing directory, or one
    without reports, gives ``[]``; an unreadable report raises :class:`ReportError`.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    skip = set(exclude_pids) if exclude_pids is not None else {os.getpid()}
    out: list[Finding] = []
    for path in sorted(folder.glob("memdiag-*.json")):
        report = load_report(path)
        if report.pid is not None and report.pid in skip:
            continue
        out.extend(relabel(report))
    out.sort(key=lambda f: (not f.is_leak, -f.nbytes))
    return out


@dataclass(frozen=True)
class RankRow:
    """One line of the per-rank table."""

    label: str
    rank: int | None
    pid: int | None
    leaked: bool
    leaked_bytes: int
    top: str
    """The biggest leak's headline, or the report's summary when it is clean."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rank_rows(reports: Iterable[WorkerReport]) -> list[RankRow]:
    rows = []
    for report in reports:
        leaks = report.result.leaks
        top = max(leaks, key=lambda f: f.nbytes).headline() if leaks else report.result.summary()
        rows.append(
            RankRow(
                label=report.label,
                rank=report.rank,
                pid=report.pid,
                leaked=report.result.leaked,
                leaked_bytes=report.leaked_bytes,
                top=top,
            )
        )
    return rows


def _relabel_reading(reading: DeviceReading, prefix: str) -> DeviceReading:
    return dataclasses.replace(reading, device=f"{prefix}/{reading.device}")


def merge_results(reports: Iterable[WorkerReport]) -> CheckResult:
    """One :class:`CheckResult` for many processes.

    Devices (and their phase readings) are renamed ``rank1/cuda:1`` / ``pid1234/cpu``
    so each process keeps its own table; findings keep their device and get the
    process' label; it leaked if any of them did.
    """
    items = list(reports)
    devices: list[DeviceCheck] = []
    phases: list[PhaseRecord] = []
    findings: list[Finding] = []
    notices: list[str] = []
    for report in items:
        prefix = report.short_label
        result = report.result
        devices.extend(
            dataclasses.replace(
                check,
                device=f"{prefix}/{check.device}",
                baseline=_relabel_reading(check.baseline, prefix),
                final=_relabel_reading(check.final, prefix),
            )
            for check in result.devices
        )
        phases.extend(
            dataclasses.replace(
                record, readings=tuple(_relabel_reading(r, prefix) for r in record.readings)
            )
            for record in result.phases
        )
        findings.extend(relabel(report))
        notices.extend(f"{report.label}: {notice}" for notice in result.notices)
    findings.sort(key=lambda f: (not f.is_leak, -f.nbytes))
    settles = [r.result.settle_s for r in items]
    known = [s for s in settles if s is not None]
    return CheckResult(
        leaked=any(r.result.leaked for r in items),
        devices=tuple(devices),
        phases=tuple(phases),
        findings=tuple(findings),
        cheap=all(r.result.cheap for r in items),
        settle_s=max(known, default=0.0) if len(known) == len(settles) else None,
        elapsed_s=max((r.result.elapsed_s for r in items), default=0.0),
        notices=tuple(notices),
        analysis={"merged_from": [str(r.path) for r in items]},
    )


class WorkerReportDir:
    """The parent's side of worker reports: a directory its children report to.

    :meth:`activate` sets ``$MEMDIAG_AGENT_DIR`` (children inherit it when they
    start, so activate before starting them); :meth:`findings` reads what the workers
    wrote; :meth:`close` restores the variable and removes a directory it created.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._given = None if directory is None else Path(directory)
        self.path: Path | None = self._given
        self._saved: str | None = None
        self._active = False

    def activate(self) -> Path:
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix="memdiag-workers-"))
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        self._saved = os.environ.get(ENV_DIR)
        os.environ[ENV_DIR] = str(self.path)
        self._active = True
        return self.path

    def findings(self) -> list[Finding]:
        """Findings of every worker that has written its report so far."""
        return [] if self.path is None else merge_worker_reports(self.path)

    def close(self) -> None:
        if self._active:
            if self._saved is None:
                os.environ.pop(ENV_DIR, None)
            else:
                os.environ[ENV_DIR] = self._saved
            self._active = False
        if self._given is None and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

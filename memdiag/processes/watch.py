"""The processes of this process' tree, followed from the baseline to the check.

:class:`ProcessWatch` sees which child appeared in which phase, its command line,
the device memory the driver charges to it, whether it is still alive after
shutdown, and how long its memory took to come back after it exited;
:func:`without_covered_processes` keeps those processes from being counted twice.

Everything here reads ``/proc`` (our own subtree, where the kernel can list
children) and the backends' readings; nothing launches work.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memdiag.processes.proctree import cmdline as proc_cmdline
from memdiag.processes.proctree import pid_cursor, process_tree, stat_fields
from memdiag.values.findings import Finding, FindingKind
from memdiag.values.readings import DeviceReading, ProcessUsage
from memdiag.values.units import format_bytes

__all__ = [
    "DEFAULT_HELPERS",
    "ProcessRecord",
    "ProcessWatch",
    "short_cmdline",
    "without_covered_processes",
]

_PROC = Path("/proc")

DEFAULT_HELPERS: tuple[str, ...] = (
    "multiprocessing.resource_tracker",
    "multiprocessing.semaphore_tracker",
    "multiprocessing.forkserver",
    "torch/_inductor/compile_worker",
)
"""Command-line fragments of helper processes that live as long as their parent by
design (multiprocessing's resource tracker and fork server, Inductor's compile
workers): never reported as workers left alive."""


def _stat(pid: int) -> list[str] | None:
    """:func:`~memdiag.processes.proctree.stat_fields`, with starttime ``[19]`` present."""
    fields = stat_fields(pid)
    return fields if fields is not None and len(fields) > 19 else None


def _start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields is not None else None


def _alive(pid: int, start_ticks: int | None) -> bool:
    """Running (not a zombie) and still the same process (its PID was not reused)."""
    fields = _stat(pid)
    if fields is None:
        if start_ticks is not None or not _PROC.is_dir():
            return False
        try:  # no /proc here: ask the kernel
            os.kill(pid, 0)
        except PermissionError:
            return True
        except OSError:
            return False
        return True
    if fields[0] in ("Z", "X", "x"):
        return False
    return start_ticks is None or int(fields[19]) == start_ticks


def _rss(pid: int) -> int | None:
    try:
        pages = int((_PROC / str(pid) / "statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def short_cmdline(command: str, *, max_len: int = 120) -> str:
    """``/usr/bin/python3.11 -m engine.worker rank=1`` -> ``python3.11 -m engine.worker
    rank=1``: the program's directory dropped, the whole cut to ``max_len``."""
    program, sep, rest = command.partition(" ")
    text = os.path.basename(program) + sep + rest if "/" in program else command
    return text if len(text) <= max_len else text[: max_len - 1] + "…"


@dataclass(frozen=True)
class ProcessRecord:
    """One process of the tree: when it appeared and what it is."""

    pid: int
    cmdline: str
    phase: str | None
    """The phase during which it appeared; ``None`` for processes already there at the
    baseline, ``""`` for one that appeared after the last phase."""
    start_ticks: int | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"process {self.pid} (`{short_cmdline(self.cmdline) or '?'}`)"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "cmdline": self.cmdline, "phase": self.phase}


@dataclass
class _Exit:
    seen_dead: float
    held: dict[str, int] = field(default_factory=dict)
    """Device -> bytes still charged to the process after it was seen dead."""
    released: float | None = None


_BASELINE: tuple[int, int, dict[int, ProcessRecord]] | None = None
"""(root, PID cursor, records) of the last baseline scan: a baseline taken while the
cursor has not moved reuses it (the per-test trackers of a suite do)."""


class ProcessWatch:
    """Follows this process' tree through the tracker's phases.

    Call :meth:`start` with the baseline readings, :meth:`phase_end` with each phase's
    end readings, :meth:`observe` with every reading the check takes while it settles,
    and :meth:`findings` with the final readings.  Each call walks our own subtree in
    ``/proc`` only when the kernel's PID cursor (:func:`pid_cursor`) moved since the
    last walk (no process can have started otherwise); readings are only looked at,
    never taken.
    """

    def __init__(self, *, helpers: Sequence[str] = DEFAULT_HELPERS) -> None:
        self._helpers = tuple(helpers)
        self._root = os.getpid()
        self._records: dict[int, ProcessRecord] = {}
        self._exits: dict[int, _Exit] = {}
        self._last_phase = ""
        self._cursor: int | None = None
        """The PID cursor when the tree was last walked (``None``: walk every time)."""
        self.usage: list[tuple[str, dict[int, dict[str, int]]]] = []
        """(phase, pid -> device -> bytes) at each phase end, for the tree's processes."""

    @property
    def processes(self) -> tuple[ProcessRecord, ...]:
        """Every process of the tree seen since the baseline, this one excluded."""
        return tuple(self._records.values())

    @property
    def started(self) -> tuple[ProcessRecord, ...]:
        """The processes that appeared during tracking (helpers excluded)."""
        self._refresh()
        return tuple(
            r for r in self._records.values() if r.phase is not None and not self._helper(r)
        )

    def _refresh(self) -> None:
        # A child caught between fork and exec shows its parent's command line, or none
        # at all; read it again while the process lives, keep the last one after.
        for pid, record in self._records.items():
            if record.phase is None or not _alive(pid, record.start_ticks):
                continue
            command = proc_cmdline(pid)
            if command and command != record.cmdline:
                self._records[pid] = dataclasses.replace(record, cmdline=command)

    def _helper(self, record: ProcessRecord) -> bool:
        return any(fragment in record.cmdline for fragment in self._helpers)

    def _scan(self, phase: str | None) -> None:
        cursor = pid_cursor()  # read before the walk: a process started during it moves it
        if cursor is not None and cursor == self._cursor:
            return
        self._cursor = cursor
        for pid in process_tree(self._root):
            if pid == self._root or pid in self._records:
                continue
            ticks = _start_ticks(pid)
            if ticks is None or not _alive(pid, ticks):
                continue  # exited (or a zombie: it holds nothing) while we looked
            self._records[pid] = ProcessRecord(pid, proc_cmdline(pid), phase, ticks)

    def start(self, readings: Mapping[str, DeviceReading] | None = None) -> None:
        """Record the processes that exist at the baseline (never reported)."""
        global _BASELINE
        self._root = os.getpid()
        self._records.clear()
        self._exits.clear()
        self.usage.clear()
        last = _BASELINE
        cursor = pid_cursor()
        if cursor is not None and last is not None and last[:2] == (self._root, cursor):
            self._records.update(last[2])
            self._cursor = cursor
        else:
            self._cursor = None
            self._scan(None)
            if self._cursor is not None:
                _BASELINE = (self._root, self._cursor, dict(self._records))
        self._record_usage("baseline", readings)

    def phase_end(self, name: str, readings: Mapping[str, DeviceReading] | None = None) -> None:
        """Children that appeared since the last call appeared during phase ``name``."""
        self._scan(name)
        self._last_phase = name
        self._record_usage(name, readings)

    def _record_usage(self, name: str, readings: Mapping[str, DeviceReading] | None) -> None:
        table: dict[int, dict[str, int]] = {}
        for device, usage in _by_pid(readings).items():
            for pid, used in usage.items():
                if pid in self._records or pid == self._root:
                    table.setdefault(pid, {})[device] = used
        self.usage.append((name, table))

    def observe(self, readings: Mapping[str, DeviceReading] | None = None) -> None:
        """One poll of the check: who exited, and whether the driver still charges them."""
        self._scan("")
        now = time.monotonic()
        charged = _by_pid(readings)
        for record in self.started:
            if _alive(record.pid, record.start_ticks):
                continue
            gone = self._exits.setdefault(record.pid, _Exit(seen_dead=now))
            held = {d: u[record.pid] for d, u in charged.items() if u.get(record.pid, 0) > 0}
            if held:
                gone.held = held
                gone.released = None
            elif gone.held and gone.released is None:
                gone.released = now

    def pending(self) -> bool:
        """Whether waiting may still help: a child alive, or an exited child's memory
        still charged to it.  The tracker keeps settling while this is true."""
        for record in self.started:
            if _alive(record.pid, record.start_ticks):
                return True
        return any(e.held and e.released is None for e in self._exits.values())

    def findings(
        self, readings: Mapping[str, DeviceReading] | None = None, *, observed: bool = False
    ) -> list[Finding]:
        """``WORKER`` findings: children alive after shutdown, and memory of exited ones
        released late (a note) or not at all (a leak).  ``observed``: the caller has
        just called :meth:`observe` with these readings (the tracker's check has), so
        the process tree is not scanned again."""
        if not observed:
            self.observe(readings)
        charged = _by_pid(readings)
        per_pid_known = any(r.processes for r in (readings or {}).values())
        out: list[Finding] = []
        for record in self.started:
            if _alive(record.pid, record.start_ticks):
                held = {d: u[record.pid] for d, u in charged.items() if u.get(record.pid, 0) > 0}
                out.append(_alive_finding(record, held, per_pid_known, self._last_phase))
            elif record.pid in self._exits and self._exits[record.pid].held:
                out.append(_exit_finding(record, self._exits[record.pid]))
        out.sort(key=lambda f: (not f.is_leak, -f.nbytes))
        return out

    def to_json(self) -> dict[str, Any]:
        """The per-phase table of the tree, JSON-safe (for ``CheckResult.analysis``)."""
        return {
            "processes": [r.to_json() for r in self._records.values()],
            "usage": [
                {"phase": name, "pids": {str(pid): devs for pid, devs in table.items()}}
                for name, table in self.usage
            ],
        }


def _by_pid(readings: Mapping[str, DeviceReading] | None) -> dict[str, dict[int, int]]:
    if not readings:
        return {}
    return {device: {p.pid: p.used for p in r.processes} for device, r in readings.items()}


def _on(held: Mapping[str, int]) -> str:
    return " and ".join(f"{format_bytes(n)} on {d}" for d, n in sorted(held.items()))


def _since(record: ProcessRecord, last_phase: str) -> str:
    if record.phase:
        return f"started during phase '{record.phase}'"
    return f"started after phase '{last_phase}'" if last_phase else "started during tracking"


def _worker_finding(
    record: ProcessRecord, held: Mapping[str, int], what: str, *, leak: bool, advice: str = ""
) -> Finding:
    """A ``WORKER`` finding on the device where ``record`` holds most (``cpu`` when it
    holds nothing); ``what`` follows the process' description."""
    total = sum(held.values())
    return Finding(
        kind=FindingKind.WORKER,
        device=max(held, key=lambda d: held[d]) if held else "cpu",
        nbytes=total,
        is_leak=leak,
        message=f"{record.describe()} {what}",
        advice=advice,
        processes=(ProcessUsage(record.pid, total, record.cmdline[:80]),) if held else (),
    )


def _alive_finding(
    record: ProcessRecord, held: Mapping[str, int], per_pid_known: bool, last_phase: str
) -> Finding:
    if held:
        holds = f" and holds {_on(held)}"
    elif per_pid_known:
        holds = " (it holds no device memory)"
    else:
        rss = _rss(record.pid)
        holds = f" (resident memory {format_bytes(rss)})" if rss is not None else ""
    return _worker_finding(
        record,
        held,
        f"{_since(record, last_phase)} is still alive after shutdown{holds}",
        leak=True,
        advice=(
            "stop and join worker processes in shutdown (process.join(), pool.close() and "
            "pool.join(), executor.shutdown()); run them under memdiag.agent to see their heap"
        ),
    )


def _exit_finding(record: ProcessRecord, gone: _Exit) -> Finding:
    if gone.released is not None:
        delay = gone.released - gone.seen_dead
        return _worker_finding(
            record,
            gone.held,
            f"exited, but its memory ({_on(gone.held)}) was released only after "
            f"{delay:.1f} s (the driver releases it lazily; counted against the settle time)",
            leak=False,
        )
    waited = time.monotonic() - gone.seen_dead
    return _worker_finding(
        record,
        gone.held,
        f"exited, but {_on(gone.held)} is still charged to it {waited:.1f} s after its "
        "exit was seen",
        leak=True,
        advice="raise --settle if the driver releases memory lazily (ROCm: ~10 s)",
    )


def without_covered_processes(
    findings: Iterable[Finding], process_findings: Iterable[Finding]
) -> list[Finding]:
    """``findings`` with the processes that ``WORKER`` findings already report taken out
    of ``OTHER_PROCESS`` findings (dropped when nothing is left), so no byte counts twice."""
    covered = {p.pid for f in process_findings for p in f.processes}
    out: list[Finding] = []
    for finding in findings:
        if finding.kind is not FindingKind.OTHER_PROCESS or not covered:
            out.append(finding)
            continue
        rest = tuple(p for p in finding.processes if p.pid not in covered)
        if not rest:
            continue
        if len(rest) == len(finding.processes):
            out.append(finding)
            continue
        names = ", ".join(f"{p.pid} ({p.name or '?'}) {format_bytes(p.used)}" for p in rest)
        total = sum(p.used for p in rest)
        out.append(
            dataclasses.replace(
                finding,
                processes=rest,
                nbytes=total,
                message=(
                    f"{format_bytes(total)} is held by {len(rest)} other process(es) of this "
                    f"process tree: {names}"
                ),
            )
        )
    return out

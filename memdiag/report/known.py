"""Known leaks: signatures of leaks a project already has, reported but not failed.

A project that leaks on main cannot turn the gate on until every leak is fixed,
unless it can say "these leaks are known; fail on new ones".  A known-leaks file
lists leak signatures, each stable across runs and machines:

- ``test``: the pytest node id (or the module / ``session`` unit under wider check
  scopes), or the script path for ``memdiag run``; ``*`` and ``?`` are wildcards
  (``test_x.py::test_a[*]`` matches every parametrization; brackets are literal);
- ``kind``: the finding's class (``live_tensors``, ``gc_frozen``, ...);
- ``device``: the device type (``cuda``, ``cpu``), never the index;
- ``retainer``: a hash of the retainer groups' signatures (root and chain shape,
  never addresses, sizes, indices or line numbers); ``roots`` names them for people.

Each entry records the leak's ``bytes``.  A matching leak within ``bytes`` plus the
tolerance is reported as known and does not fail; one that grew beyond it fails.
:func:`apply_known` turns a :class:`~memdiag.result.CheckResult` into the verdict
with known leaks taken out; :func:`known_file_data` writes the file from reports.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memdiag.values.findings import Finding
from memdiag.values.result import CheckResult
from memdiag.values.units import MAX_SIZE, format_bytes, parse_size
from memdiag.values.validate import ReportFormatError, read_report_bytes

__all__ = [
    "DEFAULT_KNOWN_TOLERANCE",
    "KNOWN_FORMAT",
    "KnownLeak",
    "KnownLeaks",
    "KnownLeaksError",
    "LeakRecord",
    "LeakSignature",
    "apply_known",
    "known_file_data",
    "known_records",
    "leak_records",
    "leak_signature",
    "load_known",
    "script_unit",
]

KNOWN_FORMAT = 1
"""Value of ``memdiag_known_leaks`` in a known-leaks file."""
DEFAULT_KNOWN_TOLERANCE = 1024**2
"""Growth of a known leak that is noise unless the file says otherwise."""
_GLOB = frozenset("*?")


class KnownLeaksError(ValueError):
    """A known-leaks file that cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class LeakSignature:
    """What identifies one leak across runs: where, what class, which retainers."""

    test: str
    kind: str
    device: str
    retainer: str
    roots: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.test, self.kind, self.device, self.retainer)

    def describe(self) -> str:
        """``live_tensors on cpu held by lru_cache of m.f [3f2a91c0b7de]``."""
        held = f" held by {', '.join(self.roots)}" if self.roots else ""
        sig = f" [{self.retainer}]" if self.retainer else ""
        return f"{self.kind} on {self.device}{held}{sig}"

    def to_json(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "kind": self.kind,
            "device": self.device,
            "retainer": self.retainer,
            "roots": list(self.roots),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeakSignature:
        return cls(
            test=str(data["test"]),
            kind=str(data["kind"]),
            device=str(data["device"]),
            retainer=str(data.get("retainer") or ""),
            roots=tuple(str(r) for r in data.get("roots") or ()),
        )


@functools.lru_cache(maxsize=256)
def _pattern(glob: str) -> re.Pattern[str]:
    """``*`` and ``?`` are wildcards; brackets are literal (parametrized node ids)."""
    return re.compile(re.escape(glob).replace(r"\*", ".*").replace(r"\?", "."))


def device_type(device: str) -> str:
    """``rank1/cuda:1`` -> ``cuda``; ``cpu`` -> ``cpu``."""
    return device.rsplit("/", 1)[-1].split(":", 1)[0]


def leak_signature(finding: Finding, test: str) -> LeakSignature:
    """The signature of one finding of the run ``test``."""
    sigs = sorted({g.signature for g in finding.retainers if g.signature})
    joined = "\x1f".join(sigs).encode("utf-8", "surrogatepass")  # heap text may hold any
    retainer = hashlib.sha1(joined).hexdigest()[:12] if sigs else ""
    roots: list[str] = []
    for group in sorted(finding.retainers, key=lambda g: -g.retained_bytes):
        if group.root_name and group.root_name not in roots:
            roots.append(group.root_name)
    return LeakSignature(
        test, finding.kind.value, device_type(finding.device), retainer, tuple(roots)
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _leak_totals(result: CheckResult, test: str) -> dict[LeakSignature, int]:
    totals: dict[LeakSignature, int] = {}
    for finding in result.leaks:
        sig = leak_signature(finding, test)
        totals[sig] = totals.get(sig, 0) + finding.nbytes
    return totals


@dataclass(frozen=True)
class LeakRecord:
    """One leak of a run, by signature: its bytes (findings with the same signature on
    several devices add up) and whether a known-leaks file covered it."""

    signature: LeakSignature
    bytes: int
    known: bool = False
    """Listed, and within the recorded bytes plus tolerance: reported, not failed."""
    recorded: int | None = None
    """The bytes the known-leaks file records, when listed (known or grown)."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.signature.to_json(),
            "bytes": self.bytes,
            "known": self.known,
            "recorded": self.recorded,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeakRecord:
        recorded = data.get("recorded")
        return cls(
            signature=LeakSignature.from_json(data),
            bytes=int(data["bytes"]),
            known=bool(data.get("known", False)),
            recorded=None if recorded is None else int(recorded),
        )


def leak_records(result: CheckResult, test: str) -> list[LeakRecord]:
    """Every leak of ``result``, failing or known, one per signature, biggest first."""
    matched = {LeakSignature.from_json(r).key: r for r in known_records(result)}
    out = []
    for sig, nbytes in _leak_totals(result, test).items():
        record = matched.pop(sig.key, None)
        recorded = _int(record.get("recorded")) if record is not None else None
        out.append(LeakRecord(sig, nbytes, known=False, recorded=recorded))
    for record in matched.values():
        if not record.get("grew"):
            out.append(
                LeakRecord(
                    LeakSignature.from_json(record),
                    _int(record.get("bytes")),
                    known=True,
                    recorded=_int(record.get("recorded")),
                )
            )
    return sorted(out, key=lambda r: (-r.bytes, r.signature.key))


def script_unit(script: str | os.PathLike[str]) -> str:
    """The ``test`` of a ``memdiag run``: the script relative to the working directory
    when inside it, with forward slashes, so the same file matches from any checkout."""
    path = Path(os.path.abspath(script))
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass(frozen=True)
class KnownLeak:
    """One entry of a known-leaks file."""

    signature: LeakSignature
    bytes: int
    tolerance: int = DEFAULT_KNOWN_TOLERANCE
    reason: str = ""

    @property
    def limit(self) -> int:
        return self.bytes + self.tolerance

    def matches(self, sig: LeakSignature) -> bool:
        mine = self.signature
        if (mine.kind, mine.device, mine.retainer) != (sig.kind, sig.device, sig.retainer):
            return False
        if _GLOB.isdisjoint(mine.test):
            return mine.test == sig.test
        return _pattern(mine.test).fullmatch(sig.test) is not None

    def to_json(self) -> dict[str, Any]:
        data = self.signature.to_json()
        data["bytes"] = self.bytes
        if self.tolerance != DEFAULT_KNOWN_TOLERANCE:
            data["tolerance"] = self.tolerance
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class KnownLeaks:
    """The entries of a known-leaks file, and where it came from."""

    leaks: tuple[KnownLeak, ...]
    source: str = ""

    def find(self, sig: LeakSignature) -> KnownLeak | None:
        return next((k for k in self.leaks if k.matches(sig)), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "memdiag_known_leaks": KNOWN_FORMAT,
            "leaks": [k.to_json() for k in self.leaks],
        }


def _size(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        if value > MAX_SIZE:
            raise KnownLeaksError(f"{where}: {value} is more than {format_bytes(MAX_SIZE)}")
        return value
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as exc:
            raise KnownLeaksError(f"{where}: {exc}") from None
    raise KnownLeaksError(f"{where}: {value!r} is not a size (bytes, or a string like '4MiB')")


def _shown(value: object) -> str:
    """A JSON value for an error message: short, whatever it is."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def parse_known(data: object, *, source: str = "") -> KnownLeaks:
    """A known-leaks file's JSON data; :class:`KnownLeaksError` says what is wrong."""
    where = source or "known-leaks file"
    if not isinstance(data, dict) or data.get("memdiag_known_leaks") != KNOWN_FORMAT:
        raise KnownLeaksError(
            f"{where} is not a memdiag known-leaks file (expected a JSON object with "
            f'"memdiag_known_leaks": {KNOWN_FORMAT}); write one with `memdiag known update`'
        )
    default_tolerance = _size(data.get("tolerance", DEFAULT_KNOWN_TOLERANCE), f"{where} tolerance")
    entries = data.get("leaks")
    if not isinstance(entries, list):
        raise KnownLeaksError(f'{where}: "leaks" must be a list of leak signatures')
    leaks = []
    for index, entry in enumerate(entries):
        at = f"{where} leaks[{index}]"
        if not isinstance(entry, dict):
            raise KnownLeaksError(f"{at} is a JSON {type(entry).__name__}, not an object")
        missing = [k for k in ("test", "kind", "device", "bytes") if k not in entry]
        if missing:
            raise KnownLeaksError(f"{at} lacks {', '.join(missing)}")
        for key in ("test", "kind", "device", "retainer", "reason"):
            if key in entry and not isinstance(entry[key], str | None):
                raise KnownLeaksError(f"{at} {key}: {_shown(entry[key])} is not a string")
        roots = entry.get("roots")
        if roots is not None and (
            not isinstance(roots, list) or not all(isinstance(r, str) for r in roots)
        ):
            raise KnownLeaksError(f"{at} roots: {_shown(roots)} is not a list of strings")
        leaks.append(
            KnownLeak(
                signature=LeakSignature.from_json(entry),
                bytes=_size(entry["bytes"], f"{at} bytes"),
                tolerance=_size(entry.get("tolerance", default_tolerance), f"{at} tolerance"),
                reason=str(entry.get("reason") or ""),
            )
        )
    return KnownLeaks(tuple(leaks), source)


def load_known(path: str | os.PathLike[str]) -> KnownLeaks:
    """Read a known-leaks file; :class:`KnownLeaksError` when missing or malformed."""
    source = Path(path)
    try:
        text = read_report_bytes(source, what="known-leaks file").decode("utf-8")
    except FileNotFoundError:
        raise KnownLeaksError(f"known-leaks file not found: {source}") from None
    except IsADirectoryError:
        raise KnownLeaksError(f"{source} is a directory, not a known-leaks file") from None
    except ReportFormatError as exc:
        raise KnownLeaksError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KnownLeaksError(f"cannot read known-leaks file {source}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnownLeaksError(f"{source} is not JSON: {exc}") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise KnownLeaksError(f"{source} is not a known-leaks file: {exc}") from None
    except RecursionError:
        raise KnownLeaksError(f"{source} is not a known-leaks file: nested too deeply") from None
    return parse_known(data, source=str(source))


# -- the verdict with known leaks ---------------------------------------------------------
def apply_known(result: CheckResult, known: KnownLeaks | None, *, test: str) -> CheckResult:
    """``result`` with its known leaks reported but not failed.

    A leak whose signature is listed and whose bytes stay within the recorded bytes
    plus tolerance becomes a note ("known leak ..."); one that grew stays a leak and
    says by how much.  What was matched goes to ``analysis["known_leaks"]``.
    """
    if known is None or not result.leaks:
        return result
    sizes = _leak_totals(result, test)
    findings: list[Finding] = []
    records: list[dict[str, Any]] = []
    seen: set[LeakSignature] = set()
    for finding in result.findings:
        if not finding.is_leak:
            findings.append(finding)
            continue
        sig = leak_signature(finding, test)
        entry = known.find(sig)
        if entry is None:
            findings.append(finding)
            continue
        total = sizes.get(sig, finding.nbytes)
        grew = total > entry.limit
        if sig not in seen:
            seen.add(sig)
            records.append(
                {
                    **sig.to_json(),
                    "bytes": total,
                    "recorded": entry.bytes,
                    "tolerance": entry.tolerance,
                    "grew": grew,
                    "reason": entry.reason,
                }
            )
        if grew:
            message = (
                f"known leak grew: {format_bytes(total)}, recorded {format_bytes(entry.bytes)} "
                f"(tolerance {format_bytes(entry.tolerance)}); {finding.message}"
            )
            findings.append(dataclasses.replace(finding, message=message))
        else:
            why = f" ({entry.reason})" if entry.reason else ""
            message = (
                f"known leak{why}, {format_bytes(total)} within the recorded "
                f"{format_bytes(entry.bytes)} + {format_bytes(entry.tolerance)}: {finding.message}"
            )
            findings.append(dataclasses.replace(finding, is_leak=False, message=message))
    if not records:
        return result
    analysis = dict(result.analysis)
    analysis["known_leaks"] = records
    return dataclasses.replace(
        result,
        findings=tuple(findings),
        leaked=any(f.is_leak for f in findings),
        analysis=analysis,
    )


def known_records(result: CheckResult) -> list[dict[str, Any]]:
    """What :func:`apply_known` matched in ``result`` (read back from JSON too)."""
    raw = result.analysis.get("known_leaks")
    return [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []


def known_file_data(
    leaks: Iterable[LeakRecord],
    *,
    previous: KnownLeaks | None = None,
    tolerance: int | None = None,
) -> KnownLeaks:
    """The known-leaks file that covers ``leaks``, sorted by test.

    An entry of ``previous`` that still matches is kept with its test pattern, reason
    and tolerance, its bytes updated (a glob covering several tests records the
    largest); entries ``leaks`` no longer has are dropped (the leak was fixed).
    ``tolerance`` overrides every entry's tolerance.
    """
    out: dict[tuple[str, str, str, str], KnownLeak] = {}
    for leak in leaks:
        before = previous.find(leak.signature) if previous is not None else None
        if before is not None and not _GLOB.isdisjoint(before.signature.test):
            sig = dataclasses.replace(before.signature, roots=leak.signature.roots)
            current = out.get(sig.key)
            nbytes = max(leak.bytes, current.bytes if current is not None else 0)
        else:
            sig = leak.signature
            current = out.get(sig.key)
            nbytes = leak.bytes + (current.bytes if current is not None else 0)
        chosen = tolerance
        if chosen is None:
            chosen = before.tolerance if before is not None else DEFAULT_KNOWN_TOLERANCE
        out[sig.key] = KnownLeak(
            signature=sig,
            bytes=nbytes,
            tolerance=chosen,
            reason=before.reason if before is not None else "",
        )
    ordered: Sequence[KnownLeak] = sorted(out.values(), key=lambda k: k.signature.key)
    return KnownLeaks(tuple(ordered))

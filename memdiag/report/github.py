"""GitHub Actions annotations (``::error file=…,line=…::message``) for a leak, pointing
at the leaked tensor's allocation site or the retainer's definition when known, so
that the PR's diff shows the leak where it is made."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from memdiag.report.advice import advice_for, advice_for_group
from memdiag.report.console import encodable
from memdiag.report.facts import (
    groups_of,
    kind_label,
    limit_for,
    ordered_findings,
    shown_count,
    tolerance_for,
)
from memdiag.report.gate import GateResult
from memdiag.report.locate import Location, locate_group
from memdiag.report.session import SessionReport
from memdiag.values.findings import Finding
from memdiag.values.result import CheckResult
from memdiag.values.units import format_bytes

__all__ = [
    "Annotation",
    "GithubReport",
    "annotations_for",
    "gate_annotations",
    "in_github_actions",
    "session_annotations",
]


def in_github_actions(environ: Mapping[str, str] | None = None) -> bool:
    """GitHub sets ``GITHUB_ACTIONS=true`` in every step of a workflow."""
    env = os.environ if environ is None else environ
    return env.get("GITHUB_ACTIONS", "").lower() == "true"


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


@dataclass(frozen=True)
class Annotation:
    """One workflow command: ``level`` is ``error``, ``warning`` or ``notice``."""

    level: str
    title: str
    message: str
    file: str | None = None
    line: int | None = None

    def command(self) -> str:
        props = []
        if self.file:
            props.append(f"file={_prop(self.file)}")
            if self.line:
                props.append(f"line={self.line}")
        props.append(f"title={_prop(self.title)}")
        return f"::{self.level} {','.join(props)}::{_data(self.message)}"


def _relative(location: Location, workspace: Path) -> str:
    path = Path(location.file)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(workspace.resolve()).as_posix()
        except ValueError:
            return path.as_posix()
    return path.as_posix()


def _leak_annotations(
    finding: Finding,
    *,
    main_file: str | None,
    workspace: Path,
    limit: int | None,
    tolerance: int | None = None,
) -> list[Annotation]:
    kind = kind_label(finding.kind)
    groups = groups_of(finding)
    if not groups:
        advice = advice_for(finding)
        message = finding.headline() + (f"\nFix: {advice}" if advice else "")
        title = f"memdiag: {format_bytes(finding.nbytes)} leaked on {finding.device} ({kind})"
        return [Annotation("error", title, message)]
    out = []
    for group in groups[: shown_count(limit, [g.retained_bytes for g in groups], tolerance)]:
        location = locate_group(group, main_file=main_file)
        advice = advice_for_group(group) or finding.advice
        message = (
            f"{finding.device}: {format_bytes(group.retained_bytes)} in {group.counts_text()} "
            f"kept alive by {group.chain_text()}"
        )
        if location is not None and location.what:
            message += f"\n(at {location.what})"
        if advice:
            message += f"\nFix: {advice}"
        title = (
            f"memdiag: {format_bytes(group.retained_bytes)} leaked on {finding.device} "
            f"({kind}) by {group.root_name}"
        )
        out.append(
            Annotation(
                "error",
                title,
                message,
                file=_relative(location, workspace) if location else None,
                line=location.line if location else None,
            )
        )
    return out


def annotations_for(
    result: CheckResult,
    *,
    main_file: str | None = None,
    workspace: str | Path | None = None,
    verbosity: int = 0,
) -> list[Annotation]:
    """An error per leak (per retainer group when known), a notice per other finding.

    ``main_file`` is the script run as ``__main__`` (its globals' definitions are
    looked up there); paths are made relative to ``workspace`` (default:
    ``$GITHUB_WORKSPACE``, else the current directory) as GitHub expects."""
    base = Path(workspace or os.environ.get("GITHUB_WORKSPACE") or os.getcwd())
    out: list[Annotation] = []
    for finding in ordered_findings(result):
        if finding.is_leak:
            out.extend(
                _leak_annotations(
                    finding,
                    main_file=main_file,
                    workspace=base,
                    limit=limit_for(verbosity),
                    tolerance=tolerance_for(result, finding.device),
                )
            )
        else:
            kind = kind_label(finding.kind)
            title = f"memdiag: {format_bytes(finding.nbytes)} {kind} on {finding.device}"
            advice = advice_for(finding)
            out.append(
                Annotation(
                    "notice", title, finding.message + (f"\nFix: {advice}" if advice else "")
                )
            )
    return out


class GithubReport:
    """The workflow commands, one per line, to print on a step's stdout."""

    def __init__(
        self,
        result: CheckResult,
        *,
        main_file: str | None = None,
        workspace: str | Path | None = None,
        verbosity: int = 0,
    ) -> None:
        self.items = annotations_for(
            result, main_file=main_file, workspace=workspace, verbosity=verbosity
        )

    def render(self, file: TextIO) -> None:
        encoding = getattr(file, "encoding", None)
        for item in self.items:
            file.write(encodable(item.command(), encoding) + "\n")


def _test_file(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0]
    return path if path.endswith(".py") else None


def session_annotations(report: SessionReport, *, verbosity: int = 0) -> list[Annotation]:
    """An error per leak of each leaking test, pointing at the allocation site or the
    retainer when the test's result was kept, else at the test file; one per test over
    its peak budget."""
    out: list[Annotation] = []
    for entry in sorted(report.leaking, key=lambda e: (-e.bytes, e.nodeid)):
        result = entry.check_result()
        test_file = _test_file(entry.nodeid)
        if result is not None:
            found = annotations_for(result, main_file=test_file, verbosity=verbosity)
            out.extend(
                dataclasses.replace(
                    a, message=f"{entry.unit}: {a.message}", file=a.file or test_file
                )
                for a in found
                if a.level == "error"
            )
        else:
            title = f"memdiag: {format_bytes(entry.bytes)} leaked on {entry.device}"
            out.append(Annotation("error", title, f"{entry.unit}: {entry.summary}", test_file))
    for entry in report.over_peak:
        for text in entry.peak_failures:
            out.append(
                Annotation(
                    "error",
                    "memdiag: over its max_peak budget",
                    f"{entry.nodeid}: {text}",
                    _test_file(entry.nodeid),
                )
            )
    return out


def gate_annotations(result: GateResult) -> list[Annotation]:
    """An error per regression of the per-test gate, on the test's file."""
    return [
        Annotation(
            "error",
            f"memdiag gate: {line.change.value} in {line.test.rsplit('::', 1)[-1]}",
            line.describe(),
            _test_file(line.test),
        )
        for line in result.regressions
    ]


def print_annotations(items: list[Annotation], file: TextIO) -> None:
    for item in items:
        file.write(item.command() + "\n")

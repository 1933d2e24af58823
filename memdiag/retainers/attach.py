"""Attach the retainer analysis to a check's leak findings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from memdiag.heap.alloc_stacks import sites_for
from memdiag.retainers.analysis import analyze
from memdiag.values.findings import Finding
from memdiag.values.retainers import blame_order

__all__ = ["attach_retainers"]


def attach_retainers(
    findings: Sequence[Finding],
    *,
    record_alloc_stacks: bool = False,
    keep_over: int | None = None,
) -> tuple[list[Finding], dict[str, Any], list[str]]:
    """Run one heap analysis for every leaked storage; give each finding its groups.

    ``keep_over``: the tolerance; every group holding more is listed, however many."""
    targets: dict[int, int] = {}
    for finding in findings:
        if finding.is_leak:
            targets.update((key, nbytes) for key, nbytes, _ in finding.storages)
    if not targets:
        return list(findings), {}, []
    notices: list[str] = []
    alloc_sites: dict[int, str] | None = None
    if record_alloc_stacks:
        alloc_sites, site_notices = sites_for(findings)
        notices.extend(site_notices)
    try:
        report = analyze(targets, alloc_sites=alloc_sites, keep_over=keep_over)
    except Exception as exc:  # noqa: BLE001 - the verdict stands without the chains
        return list(findings), {}, [f"retainer analysis failed: {type(exc).__name__}: {exc}"]
    out: list[Finding] = []
    every = report.groups + report.unrooted + report.ignored
    for finding in findings:
        keys = {key for key, _, _ in finding.storages}
        mine = [g for g in every if keys.intersection(g.storage_keys)]
        if not mine:
            out.append(finding)
            continue
        # What the program must fix first; framework retention (known) after it.
        mine.sort(key=blame_order)
        updated = dataclasses.replace(finding, retainers=tuple(mine))
        excused = [g for g in mine if g.known is not None or g in report.ignored]
        if finding.is_leak and len(excused) == len(mine):
            # Every byte is framework retention or matched an ignore rule: named, not blamed.
            reasons = sorted({g.known or "an ignore rule" for g in excused})
            updated = dataclasses.replace(
                updated,
                is_leak=False,
                message=f"{finding.message}; kept by {', '.join(reasons)}, not the program",
            )
        out.append(updated)
    analysis = {
        "heap_objects": report.heap_objects,
        "elapsed_s": report.elapsed_s,
        "notes": list(report.notes),
        "target_bytes": report.target_bytes,
        "explained_bytes": report.explained_bytes,
    }
    return out, analysis, notices

"""Attach the retainer analysis to a check's leak findings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from memdiag.findings import Finding

__all__ = ["attach_retainers"]


def attach_retainers(
    findings: Sequence[Finding], *, record_alloc_stacks: bool = False
) -> tuple[list[Finding], dict[str, Any], list[str]]:
    """Run one heap analysis for every leaked storage; give each finding its groups."""
    targets: dict[int, int] = {}
    for finding in findings:
        if finding.is_leak:
            targets.update((key, nbytes) for key, nbytes, _ in finding.storages)
    if not targets:
        return list(findings), {}, []
    notices: list[str] = []
    alloc_sites: dict[int, str] | None = None
    if record_alloc_stacks:
        from memdiag.alloc_stacks import sites_for

        alloc_sites, site_notices = sites_for(findings)
        notices.extend(site_notices)
    try:
        from memdiag.retainers import analyze
    except ImportError as exc:
        return list(findings), {}, [f"retainer analysis unavailable: {exc}"]
    try:
        report = analyze(targets, alloc_sites=alloc_sites)
    except Exception as exc:  # noqa: BLE001 - the verdict stands without the chains
        return list(findings), {}, [f"retainer analysis failed: {type(exc).__name__}: {exc}"]
    out: list[Finding] = []
    for finding in findings:
        keys = {key for key, _, _ in finding.storages}
        groups = tuple(
            group.to_json() for group in report.groups if keys.intersection(group.storage_keys)
        )
        out.append(dataclasses.replace(finding, retainers=groups) if groups else finding)
    analysis = {
        "heap_objects": report.heap_objects,
        "elapsed_s": report.elapsed_s,
        "notes": list(report.notes),
        "unrooted": [u.to_json() if hasattr(u, "to_json") else u for u in report.unrooted],
    }
    return out, analysis, notices

"""HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched
when viewed) for the reviewer of a PR: the verdict, per device a memory timeline
across phases and the phase table, then the findings with their retainer trees in
collapsible ``<details>``.  The JSON report is embedded for tools."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any, TextIO

from memdiag.report.advice import advice_for, advice_for_group
from memdiag.report.facts import (
    device_points,
    groups_of,
    kind_label,
    ordered_findings,
    unrooted_groups,
)
from memdiag.report.timeline import ALLOCATOR_SERIES, DRIVER_SERIES, timeline_svg
from memdiag.values.findings import Finding
from memdiag.values.result import SCHEMA_VERSION, CheckResult
from memdiag.values.retainers import RetainerGroup
from memdiag.values.units import format_bytes, plural

__all__ = ["HtmlReport"]

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
  max-width: 1040px; padding: 0 16px; color: #18181b; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
code, .mono { font: 12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.verdict { padding: 10px 14px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.verdict.leak { background: #fee2e2; border: 1px solid #fca5a5; }
.verdict.ok { background: #dcfce7; border: 1px solid #86efac; }
.meta { color: #52525b; font-size: 12.5px; } .notice { color: #52525b; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 12px;
  font-weight: 600; margin-right: 6px; }
.badge.leak { background: #dc2626; color: #fff; } .badge.note { background: #fde68a; }
.badge.kind { background: #e4e4e7; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e4e7; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.peak td { color: #71717a; font-style: italic; }
details.finding { border: 1px solid #e4e4e7; border-radius: 6px; padding: 8px 12px;
  margin: 10px 0; }
details.finding.leak { border-left: 4px solid #dc2626; }
details.finding.note { border-left: 4px solid #f59e0b; }
details > summary { cursor: pointer; }
.advice { background: #ecfeff; border: 1px solid #a5f3fc; border-radius: 4px;
  padding: 4px 8px; }
ul.tree, ul.tree ul { list-style: none; padding-left: 18px; margin: 4px 0; }
ul.tree li { position: relative; }
ul.tree li::before { content: "\\2514\\2500"; position: absolute; left: -18px; color: #a1a1aa; }
ol.chain { margin: 4px 0; padding-left: 22px; }
ol.chain li::before { content: none; }
ol.chain li.suspect { color: #a21caf; font-weight: 600; }
.bytes { font-weight: 600; }
"""


def _e(value: object) -> str:
    return escape(str(value))


def _advice(text: str) -> str:
    """Escaped, with `code` spans set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _b(value: int | None) -> str:
    return "-" if value is None else _e(format_bytes(value))


def _phase_table(result: CheckResult, device: str) -> str:
    rows = [
        "<table class='phases'><thead><tr><th>phase</th><th>allocated</th><th>reserved</th>"
        "<th>driver used</th><th>this process</th></tr></thead><tbody>"
    ]
    for p in device_points(result, device):
        peak = p.kind == "peak"
        rows.append(
            f"<tr class='{p.kind}'><td>{_e(p.label)}</td><td>{_b(p.allocated)}</td>"
            f"<td>{_b(p.reserved)}</td><td>{'' if peak else _b(p.driver_used)}</td>"
            f"<td>{'' if peak else _b(p.process_used)}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _device_section(result: CheckResult, device: str) -> str:
    check = next(d for d in result.devices if d.device == device)
    points = device_points(result, device)
    threshold = None
    if check.baseline.allocated is not None:
        threshold = ("leak threshold", check.baseline.allocated + check.allowance)
    charts = [
        timeline_svg(
            points,
            ALLOCATOR_SERIES,
            title=f"{device}: allocator memory across phases",
            threshold=threshold,
        ),
        timeline_svg(points, DRIVER_SERIES, title=f"{device}: driver-reported memory"),
    ]
    return (
        f"<section class='device'><h2>{_e(device)}</h2>"
        f"<p class='meta'>tolerance {_e(format_bytes(check.allowance))} over baseline "
        f"(driver-level {_e(format_bytes(check.driver_allowance))}); "
        f"peak markers show the highest value within a phase where the source keeps one</p>"
        + "".join(f"<div class='chart'>{c}</div>" for c in charts if c)
        + _phase_table(result, device)
        + "</section>"
    )


def _chain(group: RetainerGroup) -> str:
    items = [f"<li><code>{_e(group.root_name)}</code> <span class='meta'>root</span></li>"]
    for index, hop in enumerate(group.chain):
        if not (hop.label or hop.node) and index != group.suspect_index:
            continue  # an instance __dict__ or a container the next label names
        cls = " class='suspect'" if index == group.suspect_index else ""
        mark = " <span class='meta'>&larr; should have died</span>" if cls else ""
        items.append(f"<li{cls}><code>{_e(hop.text())}</code>{mark}</li>")
    return f"<ol class='chain'>{''.join(items)}</ol>"


def _group(group: RetainerGroup, *, open_: bool, shown_advice: str = "") -> str:
    parts = [
        f"<li><details{' open' if open_ else ''}><summary>"
        f"<span class='bytes'>{_e(format_bytes(group.retained_bytes))}</span> "
        f"<code>{_e(group.root_name)}</code> "
        f"<span class='meta'>[{_e(group.root_kind)}, {_e(group.counts_text())}]</span>"
        "</summary><ul>"
        f"<li>example chain: <code>{_e(group.chain_text())}</code>{_chain(group)}</li>"
    ]
    if group.alloc_site:
        parts.append(f"<li>allocated at <code>{_e(group.alloc_site)}</code></li>")
    advice = advice_for_group(group)
    if advice and advice != shown_advice:
        parts.append(f"<li>fix: {_advice(advice)}</li>")
    if group.known:
        parts.append(f"<li class='meta'>known: {_e(group.known)}</li>")
    if group.note:
        parts.append(f"<li class='meta'>{_e(group.note)}</li>")
    if group.signature:
        parts.append(f"<li class='meta'>signature <code>{_e(group.signature)}</code></li>")
    parts.append("</ul></details></li>")
    return "".join(parts)


def _tree(groups: list[RetainerGroup], heading: str, shown_advice: str = "") -> str:
    total = format_bytes(sum(g.retained_bytes for g in groups))
    body = "".join(_group(g, open_=i == 0, shown_advice=shown_advice) for i, g in enumerate(groups))
    return (
        f"<div class='retainers'><strong>{_e(heading)}</strong> ({_e(total)})"
        f"<ul class='tree'>{body}</ul></div>"
    )


def _finding(finding: Finding) -> str:
    cls = "leak" if finding.is_leak else "note"
    parts = [
        f"<details class='finding {cls}'{' open' if finding.is_leak else ''}><summary>"
        f"<span class='badge {cls}'>{'LEAK' if finding.is_leak else 'note'}</span>"
        f"<span class='bytes'>{_e(format_bytes(finding.nbytes))}</span> "
        f"<span class='badge kind'>{_e(kind_label(finding.kind))}</span>"
        f"on <code>{_e(finding.device)}</code></summary>"
        f"<p>{_e(finding.message)}</p>"
    ]
    advice = advice_for(finding)
    if advice:
        parts.append(f"<p class='advice'>fix: {_advice(advice)}</p>")
    groups = groups_of(finding)
    if groups:
        parts.append(_tree(groups, "retainers", advice))
    if finding.tensors:
        rows = "".join(
            f"<tr><td>{_e(g.example.describe())}</td><td>{g.count}</td>"
            f"<td>{_e(format_bytes(g.nbytes))}</td></tr>"
            for g in finding.tensors
        )
        parts.append(
            "<details><summary>tensors</summary><table><thead><tr><th>tensor</th>"
            f"<th>count</th><th>bytes</th></tr></thead><tbody>{rows}</tbody></table></details>"
        )
    if finding.processes:
        rows = "".join(
            f"<tr><td>{p.pid} {_e(p.name or '?')}</td><td>{_e(format_bytes(p.used))}</td></tr>"
            for p in finding.processes
        )
        parts.append(
            "<table><thead><tr><th>process</th><th>used</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    parts.append("</details>")
    return "".join(parts)


class HtmlReport:
    """The report for a reviewer: one HTML file that needs no network to view."""

    def __init__(self, result: CheckResult, *, title: str = "", **context: Any) -> None:
        self.result = result
        self.title = title
        self.context = context

    def render(self, file: TextIO) -> None:
        result = self.result
        title = f"memdiag report{': ' + self.title if self.title else ''}"
        verdict = "leak" if result.leaked else "ok"
        embedded = json.dumps(
            {**result.to_json(), "context": self.context}, sort_keys=True, default=str
        ).replace("<", "\\u003c")  # no "</script>" or "<!--" can end or bend the block
        findings = ordered_findings(result)
        unrooted = unrooted_groups(result)
        file.write(
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{_e(title)}</h1>"
            f"<div class='verdict {verdict}'>{'LEAK' if result.leaked else 'OK'}: "
            f"{_e(result.summary())}</div>"
            f"<p class='meta'>{plural(len(result.devices), 'device')}, "
            f"{plural(len(result.phases), 'phase')}, "
            f"final check took {result.elapsed_s:.2f} s; report schema {SCHEMA_VERSION}</p>\n"
        )
        if result.notices:
            items = "".join(f"<li>{_e(n)}</li>" for n in result.notices)
            file.write(f"<ul class='notice'>{items}</ul>\n")
        for check in result.devices:
            file.write(_device_section(result, check.device) + "\n")
        leaks = sum(1 for f in findings if f.is_leak)
        file.write(
            f"<h2>Findings <span class='meta'>{plural(leaks, 'leak')}, "
            f"{plural(len(findings) - leaks, 'note')}, biggest first</span></h2>\n"
        )
        if not findings:
            file.write("<p>No findings: memory within tolerance.</p>\n")
        for finding in findings:
            file.write(_finding(finding) + "\n")
        if unrooted:
            file.write(_tree(unrooted, "not reached from any Python root") + "\n")
        file.write(
            f"<script type='application/json' id='memdiag-report'>{embedded}</script>\n"
            "</body></html>\n"
        )

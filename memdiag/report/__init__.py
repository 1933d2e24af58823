"""Renderers over the same finding objects, one module per output format, each a
class with ``render(file)`` (:class:`~memdiag.report.base.Renderer`): terminal (rich),
JSON (with a JSON Schema), HTML (with an SVG memory timeline), JUnit XML and GitHub
Actions annotations; plus the base/head comparison and a progress status line.

The names below load on first use: importing one renderer (or
:mod:`memdiag.report.known`, which every checked test uses) does not import rich and
the others.  (``compare`` is the submodule :mod:`memdiag.report.compare`; its
function is ``memdiag.report.compare.compare``.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memdiag.values.lazy import lazy_exports

if TYPE_CHECKING:
    from memdiag.report.base import Renderer, write_report
    from memdiag.report.compare import Comparison
    from memdiag.report.github import GithubReport, in_github_actions
    from memdiag.report.html import HtmlReport
    from memdiag.report.json_report import JsonReport, load_json, load_report, write_json
    from memdiag.report.junit import JunitReport
    from memdiag.report.progress import status
    from memdiag.report.terminal import TerminalReport, render_terminal

__all__ = [
    "Comparison",
    "GithubReport",
    "HtmlReport",
    "JsonReport",
    "JunitReport",
    "Renderer",
    "TerminalReport",
    "in_github_actions",
    "load_json",
    "load_report",
    "render_terminal",
    "status",
    "write_json",
    "write_report",
]

_HOMES = {
    "Comparison": "memdiag.report.compare",
    "GithubReport": "memdiag.report.github",
    "HtmlReport": "memdiag.report.html",
    "JsonReport": "memdiag.report.json_report",
    "JunitReport": "memdiag.report.junit",
    "Renderer": "memdiag.report.base",
    "TerminalReport": "memdiag.report.terminal",
    "in_github_actions": "memdiag.report.github",
    "load_json": "memdiag.report.json_report",
    "load_report": "memdiag.report.json_report",
    "render_terminal": "memdiag.report.terminal",
    "status": "memdiag.report.progress",
    "write_json": "memdiag.report.json_report",
    "write_report": "memdiag.report.base",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

"""Renderers over the same finding objects, one module per output format, each a
class with ``render(file)`` (:class:`~memdiag.report.base.Renderer`): terminal (rich),
JSON (with a JSON Schema), HTML (with an SVG memory timeline), JUnit XML and GitHub
Actions annotations; plus the base/head comparison and a progress status line."""

from __future__ import annotations

from memdiag.report.base import Renderer, write_report
from memdiag.report.compare import Comparison, compare
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
    "compare",
    "in_github_actions",
    "load_json",
    "load_report",
    "render_terminal",
    "status",
    "write_json",
    "write_report",
]

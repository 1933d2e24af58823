"""Renderers over the same finding objects: terminal (rich) and JSON."""

from __future__ import annotations

from memdiag.report.json_report import load_json, write_json
from memdiag.report.terminal import render_terminal

__all__ = ["load_json", "render_terminal", "write_json"]

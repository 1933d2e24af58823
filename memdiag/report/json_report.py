"""JSON report: ``CheckResult.to_json()`` plus who produced it (``context``).

The format is documented by the JSON Schema in ``memdiag/report/schema.json``
(:func:`schema`); ``schema_version`` changes whenever a field changes meaning or
goes away.  Every size is an integer number of bytes, every duration seconds; keys
are written sorted, so two runs of the same program differ only in their numbers.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from memdiag.report.base import write_report
from memdiag.values.result import CheckResult
from memdiag.values.validate import read_report_data, result_from_data

__all__ = ["JsonReport", "load_json", "load_report", "schema", "validate", "write_json"]


class JsonReport:
    """The report for machines: the whole result, every number in bytes."""

    def __init__(self, result: CheckResult, **context: Any) -> None:
        self.result = result
        self.context = context

    def data(self) -> dict[str, Any]:
        data = {"report": "run", **self.result.to_json()}
        data["context"] = {"pid": os.getpid(), "argv": list(sys.argv), **self.context}
        return data

    def render(self, file: TextIO) -> None:
        file.write(json.dumps(self.data(), indent=2, sort_keys=True, default=str) + "\n")


def write_json(result: CheckResult, path: str | Path, **context: Any) -> None:
    """Write atomically: a half-written report is never left behind."""
    write_report(JsonReport(result, **context), path)


def load_report(path: str | Path) -> tuple[CheckResult, dict[str, Any]]:
    """The result and its ``context``.  Raises ``OSError`` (missing, unreadable) or
    :class:`~memdiag.values.validate.ReportFormatError` (a ``ValueError`` naming the
    file and the field that is wrong: bad JSON, wrong types, unsupported version)."""
    data = read_report_data(path)
    context = data.get("context")
    return result_from_data(data, path), dict(context) if isinstance(context, dict) else {}


def load_json(path: str | Path) -> CheckResult:
    return load_report(path)[0]


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the report."""
    text = resources.files("memdiag.report").joinpath("schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def validate(data: dict[str, Any]) -> None:
    """Check ``data`` against :func:`schema`; raises ``jsonschema.ValidationError``."""
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        raise ImportError("validating a report needs jsonschema: pip install jsonschema") from None
    jsonschema.validate(data, schema(), cls=jsonschema.Draft202012Validator)

"""Reading a JSON report that may have been edited by hand, truncated or mangled.

:func:`read_report_data` parses the file and checks it against the shipped JSON
Schema (``schema.json``) with a small built-in validator (no jsonschema needed at
run time), then :func:`result_from_data` builds the :class:`CheckResult`.  Every
problem is a :class:`ReportFormatError` naming the file and the field, e.g.
``out.json: devices[0].final.allocated must be an integer or null, not the string
'lots'``: the CLI prints it and exits 2, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from functools import cache
from pathlib import Path
from typing import Any

from memdiag.values.result import CheckResult

__all__ = [
    "LEGACY_SESSION_SCHEMA",
    "ReportFormatError",
    "check_report",
    "read_report_data",
    "result_from_data",
]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
_ARTICLE = {"object": "an object", "array": "an array", "integer": "an integer"}


_LARGEST = 2**63
"""No byte count, pid or duration in a report is larger."""

LEGACY_SESSION_SCHEMA = "memdiag-pytest/1"
"""The ``schema`` key of memdiag 0.1's pytest session report (no ``schema_version``)."""


class ReportFormatError(ValueError):
    """A file that is not a readable memdiag JSON report; the message says why."""


@cache
def _schema() -> dict[str, Any]:
    # The schema ships with the JSON report; read as data (no import of the report layer).
    text = (Path(__file__).resolve().parents[1] / "report" / "schema.json").read_text(
        encoding="utf-8"
    )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _schema_version() -> Any:
    """The ``schema_version`` this memdiag reads (the run report's constant)."""
    run = _schema().get("$defs", {}).get("run_report", _schema())
    return run.get("properties", {}).get("schema_version", {}).get("const", 1)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"[:60]
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:27] + "..."
        return f"the string {shown!r}"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    return "an object"


def _type_ok(value: Any, name: str) -> bool:
    if name == "null":
        return value is None
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    if name == "number" and isinstance(value, float) and value != value:  # NaN
        return False
    return isinstance(value, _TYPES.get(name, ()))


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def _check(value: Any, schema: dict[str, Any], where: str) -> None:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        schema = {
            **_schema()["$defs"][ref.removeprefix("#/$defs/")],
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    field = where or "the report"
    if isinstance(schema.get("if"), dict):
        branch = "then" if _matches(value, schema["if"], where) else "else"
        if isinstance(schema.get(branch), dict):
            _check(value, schema[branch], where)
    any_of = schema.get("anyOf")
    if isinstance(any_of, list) and any_of:
        errors: list[ReportFormatError] = []
        for option in any_of:
            try:
                _check(value, option, where)
                break
            except ReportFormatError as exc:
                errors.append(exc)
        else:
            # The option whose error reaches deepest is the one the data meant.
            raise max(errors, key=lambda e: len(str(e).split(" ", 1)[0]))
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_type_ok(value, n) for n in names):
            wanted = " or ".join(
                _ARTICLE.get(n, f"a {n}") if n != "null" else "null" for n in names
            )
            raise ReportFormatError(f"{field} must be {wanted}, not {_describe(value)}")
    if "const" in schema and value != schema["const"]:
        raise ReportFormatError(f"{field} must be {schema['const']!r}, not {_describe(value)}")
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(map(str, schema["enum"]))
        raise ReportFormatError(f"{field} must be one of {choices}; not {_describe(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _LARGEST:
        raise ReportFormatError(f"{field} is out of range ({len(str(value))} digits)")
    if "minimum" in schema and _type_ok(value, "number") and value < schema["minimum"]:
        raise ReportFormatError(f"{field} must be {schema['minimum']} or more, not {value!r}")
    if isinstance(value, dict):
        properties: dict[str, Any] = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                raise ReportFormatError(f"{_path(where, key)} is missing")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], _path(where, key))
            elif extra is False:
                raise ReportFormatError(f"{field} has an unknown field {str(key)[:40]!r}")
            elif isinstance(extra, dict):
                _check(item, extra, _path(where, key))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _check(item, schema["items"], _path(where, index))


def _matches(value: Any, schema: dict[str, Any], where: str) -> bool:
    try:
        _check(value, schema, where)
    except ReportFormatError:
        return False
    return True


def check_report(data: Any) -> None:
    """Raise :class:`ReportFormatError` naming the first field that does not match the
    report's schema (types, required fields, enums, ``schema_version``)."""
    if not isinstance(data, dict):
        raise ReportFormatError(f"the top level must be an object, not {_describe(data)}")
    if data.get("schema") == LEGACY_SESSION_SCHEMA and "schema_version" not in data:
        return  # memdiag 0.1's session report: no schema; building it checks each field
    version = data.get("schema_version")
    expected = _schema_version()
    if version != expected:
        raise ReportFormatError(
            f"schema_version {version!r} is not supported (this memdiag reads {expected})"
        )
    try:
        _check(data, _schema(), "")
    except RecursionError:
        raise ReportFormatError("the report is nested deeper than any memdiag report") from None


MAX_REPORT_BYTES = 1 << 30
"""No memdiag report or known-leaks file comes near this (1 GiB)."""


def read_report_bytes(path: str | Path, *, what: str = "memdiag JSON report") -> bytes:
    """A report file's bytes: a regular file only (a FIFO would block the reader
    forever, ``/dev/zero`` never ends), at most :data:`MAX_REPORT_BYTES`.

    ``OSError`` (missing, unreadable, a directory) passes through; anything else that
    is no report is a :class:`ReportFormatError` naming the file."""
    source = Path(path)
    # O_NONBLOCK: opening a FIFO (even one swapped in after a check) never waits
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(source))
        raise ReportFormatError(
            f"{source} is not a {what}: not a regular file (a FIFO, device or socket)"
        )
    with os.fdopen(fd, "rb") as file:
        raw = file.read(MAX_REPORT_BYTES + 1)
    if len(raw) > MAX_REPORT_BYTES:
        raise ReportFormatError(f"{source} is not a {what}: larger than 1 GiB")
    return raw


def read_report_data(path: str | Path) -> dict[str, Any]:
    """The file's JSON, checked; :class:`ReportFormatError` (with the file name) if it is
    not a memdiag report.  ``OSError`` (missing, unreadable) passes through."""
    source = Path(path)
    raw = read_report_bytes(source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportFormatError(
            f"{source} is not a memdiag JSON report: not UTF-8 text (byte {exc.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportFormatError(
            f"{source} is not a memdiag JSON report: not JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ReportFormatError(f"{source} is not a memdiag JSON report: {exc}") from None
    except RecursionError:
        raise ReportFormatError(
            f"{source} is not a memdiag JSON report: JSON nested too deeply"
        ) from None
    try:
        check_report(data)
    except ReportFormatError as exc:
        raise ReportFormatError(f"{source} is not a memdiag JSON report: {exc}") from None
    assert isinstance(data, dict)
    return data


def result_from_data(data: dict[str, Any], source: str | Path = "the report") -> CheckResult:
    """Build the result from checked data; anything the schema could not rule out
    (a value out of range for its field) is a :class:`ReportFormatError` too."""
    try:
        return CheckResult.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ReportFormatError(
            f"{source} is not a memdiag JSON report: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None

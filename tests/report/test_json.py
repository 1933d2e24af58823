"""JSON report: valid against the documented schema, round-trips, stable keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memdiag.cli import main
from memdiag.report.json_report import JsonReport, load_report, schema, write_json
from memdiag.values.findings import FindingKind
from memdiag.values.result import SCHEMA_VERSION, CheckResult
from tests.report.sample import sample_result

jsonschema = pytest.importorskip("jsonschema")


def _validate(data: dict[str, Any]) -> None:
    jsonschema.validate(data, schema(), cls=jsonschema.Draft202012Validator)


def test_schema_is_a_valid_draft_2020_12_schema_of_this_version() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    for report in ("run_report", "session_report"):
        assert schema()["$defs"][report]["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_schema_lists_every_finding_kind() -> None:
    kinds = schema()["$defs"]["finding"]["properties"]["kind"]["enum"]
    assert sorted(kinds) == sorted(k.value for k in FindingKind)


def test_sample_with_every_class_validates_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(sample_result(), path, script="engine.py", script_exit_code=0)
    data = json.loads(path.read_text())
    _validate(data)
    assert {f["kind"] for f in data["findings"]} == {k.value for k in FindingKind}
    result, context = load_report(path)
    assert result.to_json() == sample_result().to_json()
    assert context["script"] == "engine.py"
    assert not list(tmp_path.glob("*.tmp"))


def test_sizes_are_integers_of_bytes() -> None:
    data = JsonReport(sample_result()).data()
    finding = data["findings"][0]
    assert finding["bytes"] == 773 * 1024**2 + 512 * 1024
    assert finding["retainers"][0]["retained_bytes"] == 768 * 1024**2
    assert data["devices"][0]["allowance"] == 16 * 1024**2


def test_invalid_data_is_rejected_by_the_schema() -> None:
    data = JsonReport(sample_result()).data()
    data["findings"][0]["bytes"] = "773.5 MiB"
    with pytest.raises(jsonschema.ValidationError):
        _validate(data)


def _shape(value: Any) -> Any:
    """Keys and types, without the values: what must not change between runs."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items()) if k not in ("storage_keys",)}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def test_real_runs_validate_and_keep_their_shape(toy_runs: dict[str, Path]) -> None:
    leaky = json.loads(toy_runs["lru_cache"].read_text())
    fixed = json.loads(toy_runs["fixed"].read_text())
    _validate(leaky)
    _validate(fixed)
    assert leaky["findings"][0]["retainers"][0]["root_kind"] == "lru_cache"
    for key in ("schema_version", "devices", "phases", "context"):
        assert _shape(leaky[key]) == _shape(fixed[key]), key
    for run in (leaky, fixed):  # notices vary by run; they are always a list of strings
        assert all(isinstance(n, str) for n in run["notices"])
    assert [p["name"] for p in leaky["phases"]] == ["create", "infer", "shutdown"]


def test_report_command_refuses_another_schema_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = JsonReport(sample_result()).data()
    data["schema_version"] = SCHEMA_VERSION + 1
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data))
    assert main(["report", str(path)]) == 2
    assert f"schema_version {SCHEMA_VERSION + 1} is not supported" in capsys.readouterr().err


def test_report_command_rerenders_and_exits_like_the_run(
    toy_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "r.html"
    assert main(["report", str(toy_runs["lru_cache"]), "--html", str(html)]) == 1
    out = capsys.readouterr().out
    assert "LEAK 10.0 MiB live tensors on cpu" in out
    assert "<svg" in html.read_text()
    assert main(["report", "-q", str(toy_runs["fixed"])]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"schema_version": 1}'])
def test_report_command_says_what_is_not_a_report(
    tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(body)
    assert main(["report", str(path)]) == 2
    assert "is not a memdiag JSON report" in capsys.readouterr().err


def test_result_from_sample_is_what_the_renderers_get() -> None:
    assert isinstance(CheckResult.from_json(sample_result().to_json()), CheckResult)

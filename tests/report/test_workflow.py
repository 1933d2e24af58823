"""examples/github-workflow.yml: valid YAML whose jobs, artifacts and commands fit
together, and whose memdiag and pytest options exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from memdiag_pytest.options import OPTIONS

from memdiag.cli import _parse

yaml = pytest.importorskip("yaml")

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "github-workflow.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def _steps(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith(action + "@")]


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in job["steps"])


def test_runs_on_pull_requests_with_read_only_permissions(workflow: dict[Any, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads `on` as true
    assert "pull_request" in triggers
    assert workflow["permissions"] == {"contents": "read"}
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            uses = step.get("uses")
            if uses:
                assert re.fullmatch(r"actions/[a-z-]+@v\d+", uses), uses


def test_suite_runs_on_base_and_head_and_uploads_one_artifact_each(
    workflow: dict[Any, Any],
) -> None:
    suite = workflow["jobs"]["suite"]
    assert suite["strategy"]["matrix"]["side"] == ["base", "head"]
    (checkout,) = _steps(suite, "actions/checkout")
    ref = checkout["with"]["ref"]
    assert "pull_request.base.sha" in ref and "pull_request.head.sha" in ref
    script = _runs(suite)
    assert "--gpu-leak-check" in script
    assert "--gpu-leak-json=memdiag-reports/memdiag-${{ matrix.side }}.json" in script
    flags = {o.flag for o in OPTIONS}
    assert set(re.findall(r"--gpu-leak-[a-z-]+", script)) <= flags
    (upload,) = _steps(suite, "actions/upload-artifact")
    assert upload["with"]["name"] == "memdiag-${{ matrix.side }}"
    assert upload["with"]["path"].rstrip("/") == "memdiag-reports"
    assert upload["with"]["if-no-files-found"] == "error"


def test_gate_downloads_what_the_suite_uploaded_then_merges_and_compares(
    workflow: dict[Any, Any],
) -> None:
    suite, gate = workflow["jobs"]["suite"], workflow["jobs"]["gate"]
    assert gate["needs"] == "suite"
    uploaded = {
        _steps(suite, "actions/upload-artifact")[0]["with"]["name"].replace(
            "${{ matrix.side }}", side
        )
        for side in suite["strategy"]["matrix"]["side"]
    }
    downloads = {
        s["with"]["name"]: s["with"]["path"] for s in _steps(gate, "actions/download-artifact")
    }
    assert set(downloads) == uploaded == {"memdiag-base", "memdiag-head"}
    assert downloads == {"memdiag-base": "reports/base", "memdiag-head": "reports/head"}
    script = _runs(gate)
    assert "memdiag merge reports/$side --json $side.json" in script
    assert "memdiag compare base.json head.json" in script
    (summary,) = [s for s in _steps(gate, "actions/upload-artifact")]
    assert summary["if"] == "always()"
    assert "memdiag-gate.md" in summary["with"]["path"]


def _memdiag_commands(script: str) -> list[list[str]]:
    """Each `memdiag ...` line of a step, shell variables filled in as the step would."""
    out = []
    for line in script.splitlines():
        line = line.strip()
        if not line.startswith("memdiag "):
            continue
        line = line.split(" > ", 1)[0].split(" || ", 1)[0]
        line = line.replace('"${known[@]}"', "--known .memdiag/known-leaks.json")
        line = line.replace("$side", "head")
        out.append(shlex.split(line)[1:])
    return out


def test_every_memdiag_command_parses(workflow: dict[Any, Any]) -> None:
    commands = [c for job in workflow["jobs"].values() for c in _memdiag_commands(_runs(job))]
    assert [c[0] for c in commands] == ["merge", "compare"]
    for args in commands:
        parsed = _parse(list(args))
        assert parsed.handler is not None
    compare = _parse(list(commands[1]))
    assert (compare.base, compare.head, compare.markdown) == (
        "base.json",
        "head.json",
        "memdiag-gate.md",
    )
    assert compare.known == ".memdiag/known-leaks.json"

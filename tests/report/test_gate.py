"""The CI gate on a real test suite: pytest runs twice (base and head), then
`memdiag compare`, `memdiag known`, `memdiag merge` and `memdiag report` on the
session reports.  Head adds one real leak (CPU tensors held by an lru_cache) and
doubles one test's peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from memdiag.cli import main
from memdiag.report.json_report import validate
from tests.report.runs import TOY, run_memdiag

MiB = 1024**2

COMMON = """
import functools

import torch


@functools.lru_cache(maxsize=None)
def cached_weights(n):
    return torch.ones(n)
"""

BASE_A = (
    COMMON
    + """
def test_clean():
    assert torch.ones(1000).sum() == 1000


def test_cache():
    assert torch.ones(1 << 20).sum() > 0


def test_peak(gpu_leak_tracker):
    with gpu_leak_tracker.phase("infer"):
        buffer = torch.zeros(2 << 20)  # 8 MiB, freed before the test ends
    del buffer
"""
)
HEAD_A = BASE_A.replace(
    "assert torch.ones(1 << 20).sum() > 0", "assert cached_weights(1 << 20).sum() > 0"
).replace("torch.zeros(2 << 20)  # 8 MiB", "torch.zeros(4 << 20)  # 16 MiB")
SUITE_B = """
import torch


def test_other():
    assert torch.ones(1 << 10).sum() > 0


def test_also_clean(gpu_leak_tracker):
    with gpu_leak_tracker.phase("work"):
        x = torch.ones(1 << 18)
    del x
"""

LEAK = "test_a.py::test_cache"
PEAK = "test_a.py::test_peak"


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "PYTEST_ADDOPTS")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--gpu-leak-check",
         "--gpu-leak-settle=0", *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


def _suite(root: Path, name: str, test_a: str) -> Path:
    path = root / name
    path.mkdir()
    (path / "test_a.py").write_text(test_a)
    (path / "test_b.py").write_text(SUITE_B)
    return path


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Session reports: base, head (the whole suite under xdist -n 2 when available),
    and head run as two shards."""
    if find_spec("torch") is None:
        pytest.skip("needs torch")
    root = tmp_path_factory.mktemp("gate")
    base, head = _suite(root, "base", BASE_A), _suite(root, "head", HEAD_A)
    out = {name: root / f"{name}.json" for name in ("base", "head", "shard1", "shard2")}
    runs = [
        (base, [f"--gpu-leak-json={out['base']}"], 0),
        (
            head,
            [f"--gpu-leak-json={out['head']}", f"--junitxml={root / 'head.xml'}"]
            + (["-n", "2"] if find_spec("xdist") else []),
            1,
        ),
        (head, [f"--gpu-leak-json={out['shard1']}", "test_a.py"], 1),
        (head, [f"--gpu-leak-json={out['shard2']}", "test_b.py"], 0),
    ]
    for cwd, args, expected in runs:
        done = _pytest(cwd, *args)
        assert done.returncode == expected, done.stdout + done.stderr
    out["head_dir"] = head
    out["junit"] = root / "head.xml"
    return out


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_session_report_is_a_valid_versioned_report(sessions: dict[str, Path]) -> None:
    pytest.importorskip("jsonschema")
    for name in ("base", "head", "shard1", "shard2"):
        data = json.loads(sessions[name].read_text())
        validate(data)
        assert (data["schema_version"], data["report"]) == (1, "pytest-session")
    head = {t["nodeid"]: t for t in json.loads(sessions["head"].read_text())["tests"]}
    (leak,) = head[LEAK]["leaks"]
    assert leak["bytes"] == 4 * MiB
    assert leak["roots"] == ["lru_cache of test_a.cached_weights"]
    assert (leak["kind"], leak["device"], leak["known"]) == ("live_tensors", "cpu", False)
    (cpu,) = head[PEAK]["devices"]
    assert (cpu["device"], cpu["peak"], cpu["end"], cpu["leaked"]) == ("cpu", 16 * MiB, 0, 0)
    assert cpu["peak_exact"] is False  # CPU tensors: the highest phase-end reading


def test_junit_properties_carry_the_numbers_per_device(sessions: dict[str, Path]) -> None:
    cases = {c.get("name"): c for c in ET.parse(sessions["junit"]).getroot().iter("testcase")}

    def props(name: str) -> dict[str, str | None]:
        return {p.get("name"): p.get("value") for p in cases[name].iter("property")}

    leak, peak = props("test_cache"), props("test_peak")
    assert leak["memdiag_leaked"] == "true"
    assert leak["memdiag_cpu_leaked_bytes"] == str(4 * MiB)
    assert leak["memdiag_cpu_end_bytes"] == str(4 * MiB)
    assert peak["memdiag_cpu_peak_bytes"] == str(16 * MiB)
    assert (peak["memdiag_cpu_end_bytes"], peak["memdiag_cpu_leaked_bytes"]) == ("0", "0")


def test_compare_fails_naming_the_new_leak_and_the_doubled_peak(
    sessions: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    markdown = tmp_path / "gate.md"
    code, out = _run(
        capsys, "compare", str(sessions["base"]), str(sessions["head"]), "--markdown", str(markdown)
    )
    assert code == 1, out
    assert (
        f"regression: {LEAK}: new leak of 4.0 MiB on cpu; held by lru_cache of "
        "test_a.cached_weights" in out
    )
    assert f"regression: {PEAK}: peak on cpu grew 8.0 MiB -> 16.0 MiB over baseline" in out
    assert "FAIL: 2 regressions in head: 1 new leak, 1 peak grew" in out
    # Sorted by impact: the 8 MiB peak growth before the 4 MiB leak.
    assert out.index(f"regression: {PEAK}") < out.index(f"regression: {LEAK}")
    text = markdown.read_text()
    assert ":x: **FAIL: 2 regressions in head" in text
    assert f"| **new leak** | `{LEAK}` | cpu | - | 4.0 MiB | +4.0 MiB |" in text
    assert f"| **peak grew** | `{PEAK}` | cpu | 8.0 MiB | 16.0 MiB | +8.0 MiB |" in text


def test_known_leak_is_reported_and_only_the_peak_fails(
    sessions: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    known = tmp_path / "known.json"
    code, out = _run(capsys, "known", "update", str(sessions["head"]), "-o", str(known))
    assert code == 0, out
    data = json.loads(known.read_text())
    (entry,) = data["leaks"]
    assert entry["test"] == LEAK
    assert entry["roots"] == ["lru_cache of test_a.cached_weights"]
    assert entry["bytes"] == 4 * MiB
    assert set(entry) == {"test", "kind", "device", "retainer", "roots", "bytes"}

    args = ["compare", str(sessions["base"]), str(sessions["head"]), "--known", str(known)]
    code, out = _run(capsys, *args)
    assert code == 1, out
    assert "FAIL: 1 regression in head: 1 peak grew" in out
    assert f"regression: {PEAK}" in out
    assert f"regression: {LEAK}" not in out
    assert "known leak" in out

    # Recorded smaller than it now is: the known leak grew, and fails again.
    entry["bytes"], entry["tolerance"] = MiB, 0
    known.write_text(json.dumps(data))
    code, out = _run(capsys, *args, "--peak-tolerance-pct", "200")
    assert code == 1, out
    assert f"regression: {LEAK}: known leak on cpu grew to 4.0 MiB, recorded 1.0 MiB" in out
    assert "FAIL: 1 regression in head: 1 known leak grew" in out


def test_pytest_with_the_known_file_passes_the_known_leak(
    sessions: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    known = tmp_path / "known.json"
    assert main(["known", "update", str(sessions["shard1"]), "-o", str(known)]) == 0
    report = tmp_path / "head-known.json"
    done = _pytest(
        sessions["head_dir"], "test_a.py", f"--gpu-leak-known={known}", f"--gpu-leak-json={report}"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "memdiag: 1 known leak (4.0 MiB) reported, not failed" in done.stdout
    data = json.loads(report.read_text())
    assert (data["leaked"], data["totals"]["known"]) == (False, 1)
    # The gate agrees with the run's own verdict on it, without --known.
    capsys.readouterr()
    code, out = _run(capsys, "compare", str(sessions["shard1"]), str(report))
    assert code == 0, out
    assert "known leak" in out


def test_base_against_base_passes(
    sessions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, "compare", str(sessions["base"]), str(sessions["base"]))
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("OK: no memory regression in 5 checked tests")


def test_head_against_base_reports_the_fix(
    sessions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, "compare", str(sessions["head"]), str(sessions["base"]))
    assert code == 0, out
    assert "stopped leaking" in out


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """What must agree between runs: not pids, timings, or the baselines (which hold
    whatever earlier tests of the same process left)."""
    tests = []
    for test in data["tests"]:
        kept = {k: v for k, v in test.items() if k not in ("overhead_s", "result")}
        if not test.get("leaked"):  # a clean test's numbers: counted, or gated by the host's
            kept.pop("summary", None)
        kept["devices"] = [{k: v for k, v in d.items() if k != "baseline"} for d in test["devices"]]
        tests.append(kept)
    return {k: v for k, v in data.items() if k not in ("context", "totals")} | {
        "tests": tests,
        "totals": {k: v for k, v in data["totals"].items() if k != "overhead_s"},
    }


def test_merge_of_two_shards_equals_the_whole_suite(
    sessions: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    merged = tmp_path / "merged.json"
    code, out = _run(
        capsys, "merge", str(sessions["shard1"]), str(sessions["shard2"]), "--json", str(merged)
    )
    assert code == 1, out  # the head suite leaks
    assert f"FAIL: 5 tests checked: 1 leaking (4.0 MiB): {LEAK}" in out
    whole = json.loads(sessions["head"].read_text())
    data = json.loads(merged.read_text())
    assert _comparable(data) == _comparable(whole)
    assert data["context"]["merged"] == [str(sessions["shard1"]), str(sessions["shard2"])]
    # A merged report is a session report like any other.
    code, out = _run(capsys, "compare", str(sessions["base"]), str(merged))
    assert code == 1 and "1 new leak, 1 peak grew" in out


def test_report_renders_a_session(
    sessions: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out = _run(capsys, "report", "-v", str(sessions["head"]))
    assert code == 1, out
    assert "memdiag session report: 5 tests checked: 1 leaking (4.0 MiB)" in out
    assert "held by: lru_cache of test_a.cached_weights" in out
    assert "::error file=test_a.py" in out
    assert "highest peaks over baseline" in out
    text = summary.read_text()
    assert text.startswith("### memdiag: leak check")
    assert f"`{LEAK}`" in text
    assert main(["report", str(sessions["base"]), "-q"]) == 0


def test_mixed_or_bad_reports_are_usage_errors(
    sessions: dict[str, Path],
    toy_runs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    code, out = _run(capsys, "compare", str(toy_runs["fixed"]), str(sessions["head"]))
    assert code == 2 and "cannot compare a `memdiag run` report" in out
    code, out = _run(capsys, "merge", str(toy_runs["fixed"]), str(sessions["head"]))
    assert code == 2 and "cannot merge pytest session reports with `memdiag run` reports" in out
    code, out = _run(capsys, "report", str(sessions["head"]), "--html", str(tmp_path / "x.html"))
    assert code == 2 and "use pytest's --junitxml" in out
    bad = tmp_path / "known.json"
    bad.write_text('{"leaks": []}')
    code, out = _run(
        capsys, "compare", str(sessions["base"]), str(sessions["head"]), "--known", str(bad)
    )
    assert code == 2 and "is not a memdiag known-leaks file" in out


def test_memdiag_run_with_a_known_leak_passes_until_it_grows(
    toy_runs: dict[str, Path], tmp_path: Path
) -> None:
    known = tmp_path / "known.json"
    done = run_memdiag("known", "update", str(toy_runs["lru_cache"]), "-o", str(known))
    assert done.returncode == 0, done.stderr
    data = json.loads(known.read_text())
    (entry,) = data["leaks"]
    assert (entry["test"], entry["roots"]) == (
        "examples/toy_engine.py",
        ["lru_cache of __main__.supports_kw"],
    )
    args = ["run", "--device", "cpu", "--known", str(known), str(TOY), "--bug", "lru_cache"]
    done = run_memdiag(*args)
    assert done.returncode == 0, done.stderr
    assert "known leak" in done.stderr
    entry["bytes"], entry["tolerance"] = 1024, 0
    known.write_text(json.dumps(data))
    done = run_memdiag(*args)
    assert done.returncode == 1, done.stderr
    assert "known leak grew: 10.0 MiB, recorded 1.0 KiB" in done.stderr

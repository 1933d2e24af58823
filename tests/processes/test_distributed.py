"""Distributed ranks and process groups: gloo on 127.0.0.1, torchrun, memdiag merge."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from memdiag.check.tracker import Tracker
from memdiag.cli import main
from memdiag.processes.distributed import (
    RankInfo,
    process_group_findings,
    process_group_state,
    rank_info,
    rank_json_path,
)
from memdiag.report.json_report import write_json
from memdiag.values.findings import FindingKind

REPO = Path(__file__).resolve().parents[2]

RANKED_ENGINE = """
import functools, torch, torch.distributed as dist
import memdiag

@functools.lru_cache(maxsize=None)
def gather_buffer(rank):
    return torch.zeros(1024, 1024)

def main():
    dist.init_process_group("gloo")
    memdiag.phase("infer")
    t = torch.ones(4)
    dist.all_reduce(t)
    assert t[0].item() == dist.get_world_size()
    if dist.get_rank() == 1:
        gather_buffer(1)  # rank 1 only keeps a 4 MiB buffer
    memdiag.phase("shutdown")
    dist.destroy_process_group()

main()
"""


@pytest.fixture
def gloo(tmp_path: Path) -> Iterator[object]:
    import torch.distributed as dist

    def init() -> None:
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
        )

    yield init
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_process_group_left_initialised_is_found(gloo: object) -> None:
    import torch.distributed as dist

    before = process_group_state()
    assert process_group_findings(before) == []
    gloo()  # type: ignore[operator]
    dist.new_group([0])
    (finding,) = process_group_findings(before)
    assert finding.kind is FindingKind.PROCESS_GROUP and finding.is_leak
    assert finding.device == "cpu"
    assert "torch.distributed is still initialised after shutdown" in finding.message
    assert "default process group (backend gloo, rank 0 of 1) and 1 more" in finding.message
    assert finding.advice == "call torch.distributed.destroy_process_group() in shutdown"
    dist.destroy_process_group()
    assert process_group_findings(before) == []


def test_groups_from_before_the_baseline_are_not_this_runs(gloo: object) -> None:
    import torch.distributed as dist

    gloo()  # type: ignore[operator]
    before = process_group_state()
    assert process_group_findings(before) == []
    group = dist.new_group([0])
    (finding,) = process_group_findings(before)
    assert "1 process group created since baseline" in finding.message
    assert "destroy_process_group(group)" in finding.advice
    dist.destroy_process_group(group)
    assert process_group_findings(before) == []


def test_process_group_findings_never_import_torch() -> None:
    code = (
        "import sys; from memdiag.processes.distributed import process_group_findings as f; "
        "assert f() == [] and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_rank_info_and_per_rank_report_paths_follow_the_launcher() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    info = rank_info(env)
    assert info == RankInfo(rank=1, world_size=2, local_rank=1)
    assert rank_json_path("out/run.json", info) == Path("out/run.rank1.json")
    assert rank_json_path("out/run.json", None) == Path("out/run.json")
    assert rank_info({}) is None and rank_info({"RANK": "x", "WORLD_SIZE": "2"}) is None


def test_two_gloo_ranks_with_a_leak_on_rank_1_are_attributed_to_rank_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "engine.py"
    script.write_text(RANKED_ENGINE)
    reports = tmp_path / "reports"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc-per-node", "2", "-m", "memdiag.agent", "--dir", str(reports)]
    done = subprocess.run(
        [*launch, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    merged = tmp_path / "merged.json"
    assert main(["merge", str(reports), "--json", str(merged)]) == 1
    out = capsys.readouterr().out
    assert "LEAK: 1 of 2 processes leaked: rank 1 (pid" in out
    data = json.loads(merged.read_text())
    rows = {row["rank"]: row for row in data["context"]["merged"]}
    assert (rows[0]["leaked"], rows[1]["leaked"]) == (False, True)
    assert rows[1]["leaked_bytes"] == 4 * 1024**2
    (leak,) = [f for f in data["findings"] if f["is_leak"]]
    assert leak["message"].startswith(f"rank 1 (pid {rows[1]['pid']}): 4.0 MiB")
    assert leak["retainers"][0]["chain_text"].startswith("lru_cache of __main__.gather_buffer")
    assert {d["device"] for d in data["devices"]} == {"rank0/cpu", "rank1/cpu"}
    # The merged report is itself a report, and merging the directory again skips it.
    assert main(["report", str(merged)]) == 1
    merged.rename(reports / "merged.json")
    assert main(["merge", str(reports)]) == 1
    assert "1 of 2 processes" in capsys.readouterr().out


def test_merge_of_clean_reports_passes_and_bad_input_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Tracker(device="cpu", settle=0.0) as tracker:
        pass
    assert tracker.result is not None
    for rank in (0, 1):
        write_json(tracker.result, tmp_path / f"out.rank{rank}.json", rank=rank, pid=100 + rank)
    assert main(["merge", str(tmp_path / "out.rank0.json"), str(tmp_path / "out.rank1.json")]) == 0
    assert "OK: memory within tolerance in all 2 processes" in capsys.readouterr().out
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    assert main(["merge", str(tmp_path)]) == 2
    assert "notes.json is not a memdiag JSON report" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "empty")]) == 2
    assert "report not found" in capsys.readouterr().err


def test_torchrun_memdiag_run_writes_one_report_per_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented form: `torchrun ... -m memdiag run --json out.json script.py`."""
    script = tmp_path / "engine.py"
    script.write_text(RANKED_ENGINE)
    out = tmp_path / "out.json"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc-per-node", "2", "-m", "memdiag", "run", "--device", "cpu"]
    done = subprocess.run(
        [*launch, "--json", str(out), str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0  # rank 1 exits 1: torchrun reports the failed rank
    assert "rank 1 of 2" in done.stderr
    rank0, rank1 = tmp_path / "out.rank0.json", tmp_path / "out.rank1.json"
    assert not json.loads(rank0.read_text())["leaked"]
    assert json.loads(rank1.read_text())["leaked"]
    assert main(["merge", str(rank0), str(rank1)]) == 1
    assert "rank 1 (pid" in capsys.readouterr().out

"""Sizes, grouping, signatures, hostile objects, known retention and the value types."""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
import threading
import types
import weakref
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from memdiag.retainers import (
    DEFAULT_KNOWN,
    IgnoreRule,
    KnownRetention,
    RetainerReport,
    analyze,
)
from tests.retainers.leaks import targets_of

ROOT = Path(__file__).resolve().parents[2]


def test_view_of_big_storage_counts_the_storage_and_says_so(
    leak_module: Any,
) -> None:
    def leak() -> dict[int, int]:
        big = torch.zeros(1 << 20)  # 4 MiB
        leak_module.HEAD = big[:16]
        return targets_of([leak_module.HEAD])

    report = analyze(leak())
    [group] = report.groups
    assert group.retained_bytes == 4 << 20
    assert "float32[16] on cpu, 64 B, view of a 4.0 MiB storage" in group.example_tensor
    assert group.chain_text().endswith(".HEAD (cpu, 64 B view of a 4.0 MiB storage)")


def test_storage_shared_by_two_roots_is_counted_once(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        base = torch.zeros(1024)
        leak_module.A = base
        leak_module.B = [base[10:], base[:10]]
        return targets_of([base])

    report = analyze(leak())
    assert sum(g.retained_bytes for g in report.groups) == 4096
    # B's views hold no storage of their own: no "0 B" group, B is another root of A's
    (group,) = report.groups
    assert group.root_name == f"{leak_module.__name__}.A" and group.retained_bytes == 4096
    assert f"{leak_module.__name__}.B" in group.other_roots
    assert report.explained_bytes == 4096


class Request:
    def __init__(self) -> None:
        self.kv = torch.zeros(4)


def test_thousand_requests_in_one_registry_are_one_finding(
    leak_module: Any,
) -> None:
    def leak() -> dict[int, int]:
        leak_module.REQUESTS = {f"req-{i}": Request() for i in range(1000)}
        leak_module.OTHER = [torch.zeros(8)]
        return targets_of([r.kv for r in leak_module.REQUESTS.values()] + leak_module.OTHER)

    report = analyze(leak())
    assert [g.tensor_count for g in report.groups] == [1000, 1]
    top = report.groups[0]
    assert top.root_name == f"{leak_module.__name__}.REQUESTS"
    assert top.retained_bytes == 1000 * 16
    assert top.suspect_text().endswith("-> Request")
    assert top.retainer_text() == f"{leak_module.__name__}.REQUESTS"


def test_other_roots_reaching_the_same_objects_are_listed(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        request = Request()
        leak_module.FIRST = request
        leak_module.SECOND = {"r": request}
        return targets_of([request.kv])

    [group] = analyze(leak()).groups
    assert group.root_name == f"{leak_module.__name__}.FIRST"
    assert group.other_roots == (f"{leak_module.__name__}.SECOND",)


def _signatures(module: Any) -> list[tuple[str, str]]:
    module.MODEL = torch.nn.Sequential(*(torch.nn.Linear(3, 3) for _ in range(4)))
    module.CACHE = {"k": [Request()]}
    targets = targets_of([*module.MODEL.parameters(), module.CACHE["k"][0].kv])
    report = analyze(targets)
    del module.MODEL, module.CACHE
    return sorted((g.signature, g.chain_text()) for g in report.groups)


def test_signatures_are_stable_across_runs_with_new_addresses(
    leak_module: Any,
) -> None:
    first = _signatures(leak_module)
    padding = [object() for _ in range(1000)]  # move the next allocations elsewhere
    second = _signatures(leak_module)
    del padding
    assert first == second
    assert len({sig for sig, _ in first}) == 2
    assert all(len(sig) == 12 for sig, _ in first)


class Hostile:
    """Everything user code can override raises."""

    payload: Any

    def __repr__(self) -> str:
        raise RuntimeError("repr called")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq called")

    def __hash__(self) -> int:
        raise RuntimeError("hash called")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"getattr {name} called")


def test_hostile_objects_mocks_and_proxies_on_the_path(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        hostile = Hostile()
        hostile.payload = torch.zeros(10)
        fake_dict = mock.Mock(spec=dict)  # isinstance(fake_dict, dict) is True
        fake_dict.inner = {"hostile": hostile}
        leak_module.HOLDER = [fake_dict, weakref.proxy(fake_dict), mock.MagicMock()]
        return targets_of([hostile.payload])

    [group] = analyze(leak()).groups
    assert group.chain_text() == (
        f"{leak_module.__name__}.HOLDER -> [0].inner['hostile'].payload (cpu, 40 B)"
    )
    assert group.chain[1].type_name == "unittest.mock.Mock"


def test_tensor_subclass_and_meta_tensors_do_not_break_the_walk(
    leak_module: Any,
) -> None:
    class Tagged(torch.Tensor):
        pass

    def leak() -> dict[int, int]:
        leak_module.TAGGED = torch.zeros(6).as_subclass(Tagged)
        leak_module.META = torch.empty(1 << 30, device="meta")  # no real storage
        return targets_of([leak_module.TAGGED])

    [group] = analyze(leak()).groups
    assert group.root_name == f"{leak_module.__name__}.TAGGED"
    assert "Tagged float32[6] on cpu" in group.example_tensor


def test_analysis_survives_a_thread_mutating_the_path(leak_module: Any) -> None:
    stop = threading.Event()

    def churn(table: dict[int, Any]) -> None:
        i = 0
        while not stop.is_set():
            table[i % 5000] = [i]
            table.pop((i * 7) % 5000, None)
            i += 1

    def leak() -> dict[int, int]:
        leak_module.TABLE = {-1: torch.zeros(3)}
        return targets_of([leak_module.TABLE[-1]])

    targets = leak()
    thread = threading.Thread(target=churn, args=(leak_module.TABLE,), daemon=True)
    thread.start()
    try:
        reports = [analyze(targets) for _ in range(2)]
    finally:
        stop.set()
        thread.join(5)
    for report in reports:
        [group] = report.groups
        assert group.chain_text() == f"{leak_module.__name__}.TABLE -> [-1] (cpu, 12 B)"


def test_chains_never_show_the_analysis_itself(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        leak_module.KEEP = [torch.zeros(2) for _ in range(3)]
        return targets_of(leak_module.KEEP)

    targets = leak()
    report = analyze(targets)
    groups = report.groups + report.unrooted
    assert [g.root_name for g in groups] == [f"{leak_module.__name__}.KEEP"]
    for group in groups:
        assert "memdiag" not in group.chain_text().replace(leak_module.__name__, "")
        assert not any(e.type_name.startswith("memdiag.") for e in group.chain)
        assert group.other_roots == ()


def test_known_framework_retention_is_flagged_not_blamed() -> None:
    name = "torch._dynamo.memdiag_fake_cache"
    module: Any = types.ModuleType(name)
    sys.modules[name] = module
    try:
        module.CONSTANTS = [torch.zeros(5)]
        report = analyze(targets_of(module.CONSTANTS))
    finally:
        del sys.modules[name]
        module.__dict__.clear()
    [group] = report.groups
    assert group.known == "torch.compile cache"
    assert "torch._dynamo.reset()" in group.note
    assert report.blamed == ()


def test_custom_known_entry_and_ignore_rules(leak_module: Any) -> None:
    leak_module.POOL = [torch.zeros(7)]
    leak_module.NOISE = [torch.zeros(9)]
    targets = targets_of(leak_module.POOL + leak_module.NOISE)
    pool = KnownRetention("engine pool", f"{leak_module.__name__}.POOL", "warm pool, by design")
    first = analyze(targets, known=(*DEFAULT_KNOWN, pool))
    noise = next(g for g in first.groups if g.root_name.endswith(".NOISE"))
    by_signature = analyze(targets, ignore=[IgnoreRule(signature=noise.signature, reason="n")])
    by_glob = analyze(targets, ignore=[IgnoreRule(root_pattern="*.NOISE")])

    assert {g.root_name.rsplit(".", 1)[1]: g.known for g in first.groups} == {
        "POOL": "engine pool",
        "NOISE": None,
    }
    for report in (by_signature, by_glob):
        assert [g.root_name.rsplit(".", 1)[1] for g in report.groups] == ["POOL"]
        assert [g.root_name.rsplit(".", 1)[1] for g in report.ignored] == ["NOISE"]


def test_max_groups_keeps_the_largest_and_says_what_was_left(
    leak_module: Any,
) -> None:
    tensors = []
    for i in range(5):
        tensor = torch.zeros(10 * (i + 1))
        setattr(leak_module, f"T{i}", tensor)
        tensors.append(tensor)
    targets = targets_of(tensors)
    del tensors, tensor
    report = analyze(targets, max_groups=2)
    assert [g.root_name.rsplit(".", 1)[1] for g in report.groups] == ["T4", "T3"]
    assert any(n.startswith("3 more groups retain 240 B in 3 tensors") for n in report.notes)


def test_alloc_sites_are_attached_to_the_example(leak_module: Any) -> None:
    leak_module.W = torch.zeros(3)
    targets = targets_of([leak_module.W])
    [key] = targets
    [group] = analyze(targets, alloc_sites={key: "engine.py:12 in load"}).groups
    assert group.alloc_site == "engine.py:12 in load"


def test_report_round_trips_through_json_and_pickle(leak_module: Any) -> None:
    leak_module.M = torch.nn.Linear(2, 2)
    report = analyze(targets_of(leak_module.M.parameters()))
    data = json.loads(json.dumps(report.to_json()))
    again = RetainerReport.from_json(data)
    assert again == report
    assert pickle.loads(pickle.dumps(report)) == report
    assert data["groups"][0]["chain_text"] == report.groups[0].chain_text()


def test_empty_targets_and_importing_without_torch() -> None:
    assert analyze({}).groups == ()
    code = (
        "import sys, memdiag.retainers as r; "
        "assert 'torch' not in sys.modules; "
        "rep = r.analyze({1: 10}); "
        "assert 'torch' not in sys.modules; "
        "print(rep.unrooted[0].root_name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "native code (no Python tensor)"


def test_benchmark_core_runs_at_a_small_size() -> None:
    path = ROOT / "tests" / "benchmarks" / "bench_retainers.py"
    spec = importlib.util.spec_from_file_location("bench_retainers", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.run(objects=0, objgraph_sample=0, repeats=1, memory=False)
    assert figures["targets"] == 1010
    assert figures["tensors_found"] >= 1010
    assert figures["ratio"] > 0
    assert figures["groups"][0].startswith("39.1 KiB in 1000 tensors (1000 storages) kept alive")

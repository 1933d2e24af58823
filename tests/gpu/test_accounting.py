"""Memory no Python tensor holds, on a real GPU (issue 13): private pools of CUDA
graphs and MemPools, pinned host buffers, autograd graphs, a real engine.

    python3 -m pytest tests/gpu/test_accounting.py -m gpu -p no:cacheprovider

Each leak's first finding names the holder (the global and the owning object);
each clean twin passes.  Skipped without CUDA; the Llama cases without transformers.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import memdiag
from memdiag.values.findings import FindingKind

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MiB = 1024**2
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _warm() -> Iterator[None]:
    (torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")).sum().item()
    torch.cuda.empty_cache()
    yield
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture
def engine() -> Iterator[types.ModuleType]:
    """A real module standing in for an engine's module globals."""
    module = types.ModuleType("engine_state")
    sys.modules["engine_state"] = module
    yield module
    sys.modules.pop("engine_state", None)
    module.__dict__.clear()


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(4)]).cuda()


def _capture(model: torch.nn.Module, x: torch.Tensor) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    graph.replay()
    return graph


def _first(tracker: memdiag.Tracker) -> Any:
    result = tracker.result
    assert result is not None
    assert result.leaked, result.findings
    return result.findings[0]


def _clean(tracker: memdiag.Tracker) -> None:
    result = tracker.result
    assert result is not None
    assert not result.leaked, [f.message for f in result.findings if f.is_leak]


@pytest.mark.parametrize("kept", [True, False])
def test_cuda_graph_pool(engine: types.ModuleType, kept: bool) -> None:
    with memdiag.track(device="cuda:0", settle=0.5) as tracker:
        model = _model()
        x = torch.randn(4096, 2048, device="cuda")
        graph = _capture(model, x)
        if kept:
            engine.GRAPHS = {"decode": graph}
        del graph, model, x
        gc.collect()
        torch.cuda.empty_cache()
    if not kept:
        _clean(tracker)
        return
    first = _first(tracker)
    assert first.kind is FindingKind.PRIVATE_POOL, first
    assert first.nbytes >= 100 * MiB
    chain = first.retainers[0].chain_text()
    assert chain.startswith("engine_state.GRAPHS -> ['decode']"), chain
    assert "CUDAGraph owning private pool" in chain
    cache = [f for f in tracker.result.findings if f.kind is FindingKind.ALLOCATOR_CACHE]  # type: ignore[union-attr]
    assert all("would return" not in f.advice or f.nbytes < first.nbytes for f in cache)
    engine.GRAPHS.clear()


@pytest.mark.parametrize("case", ["kept", "deleted", "kept and frozen"])
def test_mempool(engine: types.ModuleType, case: str) -> None:
    """A kept MemPool is a leak with its owner named; a deleted one is clean.  Frozen by
    gc.freeze(), the owner is invisible to gc.get_objects(): the owner search walks
    the whole heap (forked), so the pool is still a leak, not returnable cache."""
    with memdiag.track(device="cuda:0", settle=0.5) as tracker:
        pool = torch.cuda.MemPool()
        with torch.cuda.use_mem_pool(pool):
            block = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
        del block
        if case != "deleted":
            engine.POOLS = [pool]
        del pool
        gc.collect()
        torch.cuda.empty_cache()
        if case == "kept and frozen":
            gc.freeze()
    try:
        if case == "deleted":
            _clean(tracker)
            return
        first = _first(tracker)
        assert first.kind is FindingKind.PRIVATE_POOL and first.nbytes == 256 * MiB, first
        if case == "kept":
            chain = first.retainers[0].chain_text()
            assert chain.startswith("engine_state.POOLS -> [0]"), chain
            assert "MemPool owning private pool" in chain
    finally:
        if case == "kept and frozen":
            gc.unfreeze()
        engine.__dict__.pop("POOLS", None)


@pytest.mark.parametrize("kept", [True, False])
def test_pinned_host_buffers(engine: types.ModuleType, kept: bool) -> None:
    with memdiag.track(device="cuda", settle=0.5) as tracker:
        staging = [torch.empty(MiB, dtype=torch.uint8, pin_memory=True) for _ in range(64)]
        if kept:
            engine.STAGING = staging
        del staging
    if not kept:
        _clean(tracker)
        return
    first = _first(tracker)
    assert first.device == "host-pinned" and first.kind is FindingKind.LIVE_TENSORS, first
    assert first.nbytes == 64 * MiB
    assert first.retainers[0].chain_text().startswith("engine_state.STAGING"), first.retainers
    engine.STAGING.clear()


@pytest.mark.parametrize("detached", [False, True])
def test_autograd_graph_of_a_stored_loss(engine: types.ModuleType, detached: bool) -> None:
    model = torch.nn.Linear(2048, 2048).cuda()
    engine.total_loss = 0
    with memdiag.track(device="cuda:0", settle=0.5) as tracker:
        for _ in range(4):
            x = torch.randn(2048, 2048, device="cuda")
            loss = torch.nn.functional.cross_entropy(
                model(x), torch.zeros(2048, dtype=torch.long, device="cuda")
            )
            engine.total_loss += loss.detach() if detached else loss
        del x, loss
    if detached:
        _clean(tracker)
        return
    first = _first(tracker)
    assert first.kind is FindingKind.LIVE_TENSORS and first.nbytes >= 4 * 2 * 16 * MiB, first
    chain = first.retainers[0].chain_text()
    assert chain.startswith("engine_state.total_loss -> .grad_fn -> AddBackward0"), chain
    assert not [f for f in tracker.result.findings if f.kind is FindingKind.NATIVE]  # type: ignore[union-attr]


def _memdiag_run(
    tmp_path: Path, device: str, script: str, *args: str, **env_extra: str
) -> tuple[int, dict[str, Any]]:
    """``memdiag run --device DEVICE --json … tests/gpu/SCRIPT ARGS`` in a fresh process."""
    out = tmp_path / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        **env_extra,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "memdiag", "run", "--device", device, "--json", str(out),
         str(ROOT / "tests/gpu" / script), *args],
        env=env, capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    print(proc.stdout[-6000:], proc.stderr[-4000:])
    return proc.returncode, json.loads(out.read_text())


def _run_llama(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    pytest.importorskip("transformers")
    return _memdiag_run(tmp_path, "cuda", "llama_engine.py", *args)


def test_llama_engine_shut_down_right_is_clean(tmp_path: Path) -> None:
    code, data = _run_llama(tmp_path)
    assert code == 0, [f["message"] for f in data["findings"] if f["is_leak"]]


def test_llama_engine_keeping_a_cuda_graph_names_it(tmp_path: Path) -> None:
    code, data = _run_llama(tmp_path, "--keep", "graph")
    assert code == 1
    first = data["findings"][0]
    assert first["kind"] == "private_pool", first
    chain = first["retainers"][0]["chain_text"]
    assert chain.startswith("__main__.GRAPHS -> ['decode']"), chain
    assert "CUDAGraph owning private pool" in chain


def test_llama_engine_keeping_the_compiled_model_names_it_and_its_graph_pool(
    tmp_path: Path,
) -> None:
    code, data = _run_llama(tmp_path, "--keep", "compiled")
    assert code == 1
    first = data["findings"][0]
    # The compiled model keeps the Llama's weights: named by the global that holds it.
    assert first["kind"] == "live_tensors", first
    chain = first["retainers"][0]["chain_text"]
    assert chain.startswith("__main__.ENGINES -> ['llama']._orig_mod"), chain
    # torch.compile's CUDA graph trees keep a private pool until torch._dynamo.reset()
    # (deleting the compiled model does not free it): named, as torch.compile's cache.
    (pool,) = [f for f in data["findings"] if f["kind"] == "private_pool"]
    assert "CUDAGraphTreeManager" in pool["message"], pool["message"]
    owners = [g for g in pool["retainers"] if "CUDAGraphTreeManager owning" in g["chain_text"]]
    assert owners and owners[0]["known"] == "torch.compile cache", pool["retainers"]


# -- memory outside PyTorch: named buckets ----------------------------------------------


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One calibration cache for the module: measured by the first run, read after."""
    return tmp_path_factory.mktemp("calibration")


def _run_outside(tmp_path: Path, cache: Path, *args: str) -> tuple[int, dict[str, Any]]:
    pytest.importorskip("cupy")
    pytest.importorskip("cuda.bindings")
    return _memdiag_run(
        tmp_path, "cuda:0", "outside_engine.py", *args, MEMDIAG_CACHE_DIR=str(cache)
    )


def test_outside_pytorch_memory_lands_in_named_buckets(
    tmp_path: Path, calibration_dir: Path
) -> None:
    load = tmp_path / "load.json"
    code, data = _run_outside(tmp_path, calibration_dir, "--accounting", str(load))
    assert code == 0, [f["message"] for f in data["findings"] if f["is_leak"]]
    acc = json.loads(load.read_text())
    kinds = {b["kind"]: b for b in acc["buckets"]}
    assert kinds["context"]["measured"] and kinds["context"]["bytes"] >= 200 * MiB
    assert kinds["cumem"]["bytes"] == 512 * MiB and kinds["cumem"]["measured"]
    assert kinds["library"]["bytes"] == 320 * MiB and kinds["library"]["measured"]
    assert "nccl" in kinds and "rank 0 of 1" in kinds["nccl"]["name"], acc
    assert "blas" in kinds and not kinds["blas"]["measured"]
    assert acc["fraction_named"] >= 0.95, acc
    # After shutdown: context, library handles and what NCCL keeps after
    # destroy_process_group() (seen alive at a phase end) explain what is left.
    final = data["analysis"]["accounting"]["cuda:0"]
    names = [b["name"] for b in final["buckets"]]
    assert "NCCL kernels and state kept after destroy_process_group()" in names, final
    assert final["fraction_named"] >= 0.95, final


def test_cumem_memory_kept_mapped_is_a_leak_named_by_bucket(
    tmp_path: Path, calibration_dir: Path
) -> None:
    code, data = _run_outside(tmp_path, calibration_dir, "--keep", "cumem")
    assert code == 1
    first = data["findings"][0]
    assert first["kind"] == "outside_torch" and first["is_leak"], first
    assert "cuMem allocator (CuMemAllocator) 512.0 MiB (measured)" in first["message"], first
    assert "CUDA context" in first["message"] and "(measured)" in first["message"]


def test_cupy_pool_kept_is_a_leak_named_by_bucket(tmp_path: Path, calibration_dir: Path) -> None:
    code, data = _run_outside(tmp_path, calibration_dir, "--keep", "cupy")
    assert code == 1
    first = data["findings"][0]
    assert first["kind"] == "outside_torch" and first["is_leak"], first
    assert "CuPy memory pool 320.0 MiB (measured)" in first["message"], first


def test_process_group_left_alive_is_named_with_destroy_advice(
    tmp_path: Path, calibration_dir: Path
) -> None:
    code, data = _run_outside(tmp_path, calibration_dir, "--keep", "pg")
    assert code == 1
    (group,) = [f for f in data["findings"] if f["kind"] == "process_group"]
    assert group["is_leak"] and "rank 0 of 1" in group["message"], group
    assert "destroy_process_group()" in group["advice"]
    accounting = data["analysis"]["accounting"]["cuda:0"]
    names = [b["name"] for b in accounting["buckets"]]
    assert any(n.startswith("NCCL communicator of process group") for n in names), accounting

"""A hand-built CheckResult with fixed numbers: every FindingKind, two devices, three
phases with peaks, retainer groups of several root kinds and one unrooted group."""

from __future__ import annotations

from typing import Any

from memdiag.values.findings import Finding, FindingKind, TensorGroup, TensorSummary
from memdiag.values.readings import DeviceReading, ProcessUsage
from memdiag.values.result import CheckResult, DeviceCheck, PhaseRecord
from memdiag.values.retainers import RetainerGroup

MiB = 1024**2
GiB = 1024**3


def _reading(device: str, **values: Any) -> DeviceReading:
    base: dict[str, Any] = {"sources": ("torch", "nvml"), "total": 80 * GiB, "time": 1.0}
    return DeviceReading(device=device, **{**base, **values})


def _edge(label: str, type_name: str, node: str = "", long_lived: bool = False) -> dict[str, Any]:
    return {"label": label, "type_name": type_name, "node": node, "long_lived": long_lived}


LRU_GROUP = RetainerGroup.from_json(
    {
        "root_kind": "lru_cache",
        "root_name": "lru_cache of engine.utils.supports_kw",
        "chain": [
            _edge("cache key", "builtins.method", "bound method Model.forward", True),
            _edge("", "engine.model.Model", "Model"),
            _edge(".layers[3].weight", "torch.nn.Parameter", "cuda:0, 64.0 MiB"),
        ],
        "chain_text": (
            "lru_cache of engine.utils.supports_kw -> cache key -> bound method Model.forward"
            " -> Model -> .layers[3].weight (cuda:0, 64.0 MiB)"
        ),
        "suspect_index": 0,
        "retained_bytes": 768 * MiB,
        "tensor_count": 12,
        "storage_count": 12,
        "signature": "a1b2c3d4e5f6",
        "frozen": False,
        "known": None,
        "example_tensor": "Parameter float32[4096, 4096] on cuda:0, 64.0 MiB",
        "storage_keys": [1, 2, 3],
        "common_length": 2,
        "note": "",
        "alloc_site": "engine/model.py:88 in Model.__init__",
        "other_roots": [],
    }
)
ROPE_GROUP = RetainerGroup.from_json(
    {
        "root_kind": "module",
        "root_name": "engine.rope._ROPE_DICT",
        "chain": [
            _edge("", "dict", "", True),
            _edge("[(4096, 128)]", "tuple", "", True),
            _edge("[0]", "torch.Tensor", "cuda:0, 2.0 MiB"),
        ],
        "chain_text": "engine.rope._ROPE_DICT -> [(4096, 128)][0] (cuda:0, 2.0 MiB)",
        "suspect_index": 2,
        "retained_bytes": 4 * MiB,
        "tensor_count": 2,
        "storage_count": 2,
        "signature": "0f1e2d3c4b5a",
        "alloc_site": None,
    }
)
SINGLETON_GROUP = RetainerGroup.from_json(
    {
        "root_kind": "class",
        "root_name": "engine.workspace.Workspace._instance",
        "chain": [_edge(".buffer", "torch.Tensor", "cuda:0, 1.0 MiB")],
        "chain_text": "engine.workspace.Workspace._instance -> .buffer (cuda:0, 1.0 MiB)",
        "suspect_index": None,
        "retained_bytes": 1 * MiB,
        "tensor_count": 1,
        "storage_count": 1,
        "signature": "99aa88bb77cc",
    }
)
THREAD_GROUP = RetainerGroup.from_json(
    {
        "root_kind": "thread",
        "root_name": "thread 'detok' in Detokenizer.run (detok.py:41)",
        "chain": [_edge("local 'staging'", "torch.Tensor", "cuda:0, 512.0 KiB")],
        "chain_text": "thread 'detok' in Detokenizer.run (detok.py:41) -> local 'staging'",
        "suspect_index": None,
        "retained_bytes": 512 * 1024,
        "tensor_count": 1,
        "storage_count": 1,
        "signature": "1234abcd5678",
    }
)
FROZEN_GROUP = RetainerGroup.from_json(
    {
        "root_kind": "frozen",
        "root_name": "gc.freeze()",
        "chain": [
            _edge("", "engine.runner.Sampler", "Sampler"),
            _edge(".runner.kv_cache", "torch.Tensor", "cuda:1, 256.0 MiB"),
        ],
        "chain_text": "gc.freeze() -> Sampler -> .runner.kv_cache (cuda:1, 256.0 MiB)",
        "suspect_index": 0,
        "retained_bytes": 256 * MiB,
        "tensor_count": 1,
        "storage_count": 1,
        "signature": "feedfacecafe",
        "frozen": True,
        "note": "kept by gc.freeze(): 175423 objects frozen; this cycle is unreachable",
    }
)
UNROOTED_GROUP = RetainerGroup.from_json(
    {
        "root_kind": "native",
        "root_name": "native code (no Python tensor)",
        "chain": [],
        "chain_text": "native code (no Python tensor)",
        "suspect_index": None,
        "retained_bytes": 8 * MiB,
        "tensor_count": 0,
        "storage_count": 1,
        "signature": "000000000000",
    }
)


def _tensor(shape: tuple[int, ...], device: str, nbytes: int, count: int) -> TensorGroup:
    example = TensorSummary(
        shape=shape, dtype="float32", device=device, type_name="Parameter", nbytes=nbytes
    )
    return TensorGroup(example=example, count=count, nbytes=nbytes * count)


def sample_result() -> CheckResult:
    """Two GPUs after a leaky engine run; every number fixed."""
    worker = ProcessUsage(pid=4242, used=600 * MiB, name="python worker.py")
    base0 = _reading("cuda:0", allocated=0, reserved=0, driver_used=1 * GiB, process_used=500 * MiB)
    base1 = _reading("cuda:1", allocated=0, reserved=0, driver_used=1 * GiB, process_used=500 * MiB)
    phases = (
        PhaseRecord(
            "create",
            1.0,
            2.0,
            (
                _reading(
                    "cuda:0",
                    allocated=2 * GiB,
                    reserved=2304 * MiB,
                    peak_allocated=2 * GiB,
                    peak_reserved=2304 * MiB,
                    driver_used=3 * GiB,
                    process_used=2900 * MiB,
                ),
                _reading(
                    "cuda:1",
                    allocated=1 * GiB,
                    reserved=1 * GiB,
                    peak_allocated=1 * GiB,
                    peak_reserved=1 * GiB,
                    driver_used=2 * GiB,
                    process_used=1600 * MiB,
                ),
            ),
        ),
        PhaseRecord(
            "infer",
            2.0,
            5.0,
            (
                _reading(
                    "cuda:0",
                    allocated=2560 * MiB,
                    reserved=4 * GiB,
                    peak_allocated=3584 * MiB,
                    peak_reserved=4 * GiB,
                    driver_used=5 * GiB,
                    process_used=4700 * MiB,
                ),
                _reading(
                    "cuda:1",
                    allocated=1280 * MiB,
                    reserved=1536 * MiB,
                    peak_allocated=1536 * MiB,
                    peak_reserved=1536 * MiB,
                    driver_used=3 * GiB,
                    process_used=2100 * MiB,
                ),
            ),
        ),
        PhaseRecord(
            "shutdown",
            5.0,
            6.0,
            (
                _reading(
                    "cuda:0",
                    allocated=781 * MiB,
                    reserved=1837 * MiB,
                    peak_allocated=2560 * MiB,
                    peak_reserved=4 * GiB,
                    driver_used=3 * GiB,
                    process_used=2600 * MiB,
                ),
                _reading(
                    "cuda:1",
                    allocated=256 * MiB,
                    reserved=256 * MiB,
                    peak_allocated=1280 * MiB,
                    peak_reserved=1536 * MiB,
                    driver_used=2 * GiB,
                    process_used=1100 * MiB,
                    processes=(worker,),
                ),
            ),
        ),
    )
    final0 = _reading(
        "cuda:0",
        allocated=781 * MiB,
        reserved=1837 * MiB,
        driver_used=3 * GiB,
        process_used=2600 * MiB,
    )
    final1 = _reading(
        "cuda:1",
        allocated=256 * MiB,
        reserved=256 * MiB,
        driver_used=2 * GiB,
        process_used=1100 * MiB,
        processes=(worker,),
    )
    findings = (
        Finding(
            kind=FindingKind.LIVE_TENSORS,
            device="cuda:0",
            nbytes=773 * MiB + 512 * 1024,
            is_leak=True,
            message=(
                "773.5 MiB in 16 storages (16 tensors) created since baseline are still alive "
                "(allocated 0 B at baseline, 781.0 MiB now, tolerance 16.0 MiB)"
            ),
            advice="drop the references that keep them alive in shutdown",
            tensors=(
                _tensor((4096, 4096), "cuda:0", 64 * MiB, 12),
                _tensor((4096, 128), "cuda:0", 2 * MiB, 2),
                _tensor((1024, 256), "cuda:0", 1 * MiB, 1),
                _tensor((128, 1024), "cuda:0", 512 * 1024, 1),
            ),
            retainers=(LRU_GROUP, ROPE_GROUP, SINGLETON_GROUP, THREAD_GROUP),
        ),
        Finding(
            kind=FindingKind.GC_FROZEN,
            device="cuda:1",
            nbytes=256 * MiB,
            is_leak=True,
            message=(
                "256.0 MiB in 1 storage held only by objects frozen with gc.freeze() "
                "(0 objects frozen at baseline, 175423 now); frozen garbage is never collected"
            ),
            advice="call gc.unfreeze() in shutdown, paired with the gc.freeze() at start",
            tensors=(_tensor((2, 32, 1024, 1024), "cuda:1", 256 * MiB, 1),),
            retainers=(FROZEN_GROUP,),
        ),
        Finding(
            kind=FindingKind.NATIVE,
            device="cuda:0",
            nbytes=7 * MiB + 512 * 1024,
            is_leak=False,
            message=(
                "7.5 MiB still allocated is held by no Python tensor (within the tolerance "
                "of 16.0 MiB)"
            ),
            advice="look for autograd graphs kept by a live output (.detach() what you store)",
        ),
        Finding(
            kind=FindingKind.PRIVATE_POOL,
            device="cuda:0",
            nbytes=130 * MiB,
            is_leak=True,
            message=(
                "130.0 MiB stays reserved in 1 private pool ((1, 0) of CUDAGraph) that a "
                "live owner keeps; torch.cuda.empty_cache() cannot return it (tolerance "
                "16.0 MiB)"
            ),
            advice="drop the CUDA graph / torch.cuda.MemPool that owns the pool in shutdown",
        ),
        Finding(
            kind=FindingKind.OUTSIDE_TORCH,
            device="cuda:0",
            nbytes=300 * MiB,
            is_leak=True,
            message=(
                "300.0 MiB more device memory is charged to this process outside PyTorch's "
                "allocator than at baseline (tolerance 256.0 MiB)"
            ),
            advice="destroy NCCL communicators / process groups in shutdown",
        ),
        Finding(
            kind=FindingKind.OTHER_PROCESS,
            device="cuda:1",
            nbytes=600 * MiB,
            is_leak=True,
            message=(
                "600.0 MiB is held by 1 other process of this process tree: "
                "4242 (python worker.py) 600.0 MiB"
            ),
            advice="stop and join worker processes in shutdown",
            processes=(worker,),
        ),
        Finding(
            kind=FindingKind.WORKER,
            device="cuda:1",
            nbytes=128 * MiB,
            is_leak=True,
            message=(
                "worker pid 4343 (python -m engine.detok) started in create is still alive "
                "after shutdown and holds 128.0 MiB on cuda:1"
            ),
            advice="stop and join worker processes in shutdown (process.join())",
            processes=(ProcessUsage(pid=4343, used=128 * MiB, name="python -m engine.detok"),),
        ),
        Finding(
            kind=FindingKind.PROCESS_GROUP,
            device="cuda:0",
            nbytes=0,
            is_leak=True,
            message=(
                "torch.distributed is still initialised after shutdown: the default process "
                "group (backend nccl, rank 0 of 2) were never destroyed"
            ),
            advice="call torch.distributed.destroy_process_group() in shutdown",
        ),
        Finding(
            kind=FindingKind.ALLOCATOR_CACHE,
            device="cuda:0",
            nbytes=1056 * MiB,
            is_leak=False,
            message=(
                "the caching allocator holds 1.0 GiB more cached (reserved, not allocated) "
                "than at baseline; not a leak"
            ),
            advice="torch.cuda.empty_cache() would return 1.0 GiB",
        ),
        Finding(
            kind=FindingKind.WORKSPACE,
            device="cuda:0",
            nbytes=32 * MiB,
            is_leak=False,
            message="32.0 MiB of framework workspaces (cuBLAS) were freed while settling",
        ),
        Finding(
            kind=FindingKind.CONTEXT,
            device="cuda:1",
            nbytes=500 * MiB,
            is_leak=False,
            message=(
                "the device context was created during tracking and takes 500.0 MiB outside "
                "PyTorch for the process' life"
            ),
        ),
    )
    return CheckResult(
        leaked=True,
        devices=(
            DeviceCheck("cuda:0", base0, final0, allowance=16 * MiB, driver_allowance=256 * MiB),
            DeviceCheck("cuda:1", base1, final1, allowance=16 * MiB, driver_allowance=256 * MiB),
        ),
        phases=phases,
        findings=findings,
        cheap=False,
        settle_s=None,
        elapsed_s=1.25,
        notices=("allocation stacks were recorded for cuda:0 only",),
        analysis={
            "heap_objects": 175662,
            "elapsed_s": 0.5,
            "notes": ["searched 175662 objects"],
            "unrooted": [UNROOTED_GROUP.to_json()],
        },
    )

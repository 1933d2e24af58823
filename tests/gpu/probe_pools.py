"""Facts for issue 13 (private pools, pinned host memory, outside-PyTorch buckets) on a GPU.

python3 tests/gpu/probe_pools.py  -- prints one line per fact, a table last.
"""

from __future__ import annotations

import gc
import os
import time

import torch

MiB = 1024**2
rows: list[tuple[str, str]] = []


def nvml_own() -> int:
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
        if p.pid == os.getpid():
            return int(p.usedGpuMemory or 0)
    return 0


def pools() -> dict[tuple[int, int], tuple[int, int, int]]:
    out: dict[tuple[int, int], list[int]] = {}
    for seg in torch.cuda.memory_snapshot():
        pid = tuple(seg.get("segment_pool_id", (0, 0)))
        entry = out.setdefault(pid, [0, 0, 0])  # type: ignore[arg-type]
        entry[0] += seg["total_size"]
        entry[1] += seg["allocated_size"]
        entry[2] += (
            seg["total_size"]
            if seg["allocated_size"] == 0 and seg.get("active_size", 0) == 0
            else 0
        )
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


def fact(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)
    rows.append((name, str(value)))


fact("nvml before init", nvml_own() // MiB)
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
CONTEXT = nvml_own() - torch.cuda.memory_reserved()
fact("nvml after context / reserved", (nvml_own() // MiB, torch.cuda.memory_reserved() // MiB))
a = torch.ones(64, 64, device="cuda")
(a @ a).sum().item()
torch.cuda.empty_cache()
CUBLAS = nvml_own() - torch.cuda.memory_reserved() - CONTEXT
fact(
    "nvml after matmul+empty_cache / reserved",
    (nvml_own() // MiB, torch.cuda.memory_reserved() // MiB),
)
seg = torch.cuda.memory_snapshot()[:1]
fact("segment keys", sorted(seg[0].keys()) if seg else None)

# CUDA graph kept
model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(4)]).cuda()
static_in = torch.randn(4096, 2048, device="cuda")
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    for _ in range(2):
        model(static_in)
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    out = model(static_in)
g.replay()
fact("g.pool()", g.pool())
fact(
    "CUDAGraph tracked / in get_objects", (gc.is_tracked(g), any(o is g for o in gc.get_objects()))
)
fact("CUDAGraph mro", [c.__name__ for c in type(g).__mro__])
del out, model, static_in
gc.collect()
torch.cuda.empty_cache()
fact("graph kept: pools (reserved, allocated, free segs)", pools())
fact(
    "graph kept: allocated/reserved MiB",
    (torch.cuda.memory_allocated() // MiB, torch.cuda.memory_reserved() // MiB),
)
t0 = time.perf_counter()
for _ in range(20):
    torch.cuda.memory_snapshot()
fact("memory_snapshot ms", round((time.perf_counter() - t0) / 20 * 1000, 3))
del g
gc.collect()
torch.cuda.empty_cache()
fact("graph deleted: pools", pools())

# MemPool kept
pool = torch.cuda.MemPool()
fact(
    "MemPool id / tracked", (pool.id, gc.is_tracked(pool), [c.__name__ for c in type(pool).__mro__])
)
with torch.cuda.use_mem_pool(pool):
    x = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
del x
torch.cuda.empty_cache()
fact("mempool kept: pools", pools())
del pool
gc.collect()
torch.cuda.empty_cache()
fact("mempool deleted: pools", pools())

# pinned host memory
fact("host_memory_stats exists", hasattr(torch.cuda, "host_memory_stats"))
try:
    st = torch.cuda.host_memory_stats()
    fact("host stats keys", sorted(k for k in st if "current" in k)[:30])
except Exception as exc:  # noqa: BLE001
    fact("host stats error", exc)
bufs = [torch.empty(MiB, dtype=torch.uint8, pin_memory=True) for _ in range(32)]
st = torch.cuda.host_memory_stats()
fact(
    "host stats with 32 MiB pinned",
    {k: v for k, v in st.items() if "current" in k and "bytes" in k},
)
fact("is_pinned", bufs[0].is_pinned())
del bufs
gc.collect()
st = torch.cuda.host_memory_stats()
fact("host stats after free", {k: v for k, v in st.items() if "current" in k and "bytes" in k})
torch._C._host_emptyCache() if hasattr(torch._C, "_host_emptyCache") else None
st = torch.cuda.host_memory_stats()
fact(
    "host stats after host_emptyCache",
    {k: v for k, v in st.items() if "current" in k and "bytes" in k},
)

# torch.compile cudagraph trees
try:
    lin = torch.nn.Sequential(
        torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024)
    ).cuda()
    cm = torch.compile(lin, mode="reduce-overhead")
    inp = torch.randn(512, 1024, device="cuda")
    for _ in range(3):
        cm(inp)
    torch.cuda.synchronize()
    from memdiag.retainers.pools import live_pools

    fact("compile: live pool owners", live_pools())
    fact("compile kept: pools", pools())
    del cm, lin, inp
    gc.collect()
    torch.cuda.empty_cache()
    fact("compile model deleted: owners / pools", (live_pools(), pools()))
    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    fact("after dynamo.reset: owners / pools", (live_pools(), pools()))
except Exception as exc:  # noqa: BLE001
    import traceback

    traceback.print_exc()
    fact("compile error", exc)

# Accounting of what NVML charges this process, after all of the above.
from memdiag.backends.torch_backend import TorchBackend  # noqa: E402

backend = TorchBackend()
backend.probe()
split = backend.pools("cuda:0") or {"returnable": 0, "private": {}}
nvml = nvml_own()
allocated = torch.cuda.memory_allocated()
reserved = torch.cuda.memory_reserved()
private = sum(r - a for r, a, *_ in split["private"].values())
fact("TorchBackend.pools", split)
buckets = [
    ("torch: live tensors (allocated)", allocated),
    ("torch: cache empty_cache() returns", split["returnable"]),
    ("torch: private pools, free blocks", private),
    (
        "torch: other reserved (partly used segments)",
        reserved - allocated - split["returnable"] - private,
    ),
    ("device context (measured at creation)", CONTEXT),
    ("cuBLAS handle + kernels (measured at first matmul)", CUBLAS),
]
named = sum(b for _, b in buckets)
print("\n| bucket | MiB |\n| --- | --- |")
print(f"| NVML, this process | {nvml / MiB:.1f} |")
for name, value in buckets:
    print(f"| {name} | {value / MiB:.1f} |")
print(f"| other (not named) | {(nvml - named) / MiB:.1f} |")
print(f"| named / NVML | {100 * named / nvml:.1f}% |")
print("\n| fact | value |\n| --- | --- |")
for name, value in rows:
    print(f"| {name} | {value[:300]} |")

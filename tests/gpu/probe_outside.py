"""Probe: what NVML charges this process, step by step, and how much of it memdiag's
buckets name (issue 13).  Prints one line a step and a table last.

    PYTHONPATH=.:plugins python3 tests/gpu/probe_outside.py

Steps: context; matmuls (cuBLAS); a convolution (cuDNN); a one-rank NCCL group; 512
MiB through cuMem (vLLM's allocator layout); 320 MiB in CuPy's pool; torch.compile
(Triton kernels); a CUDA graph; then shutdown of each.  The calibration child runs
first (its own cache directory), and its figures are printed.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MEMDIAG_CACHE_DIR", tempfile.mkdtemp(prefix="memdiag-cal-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.distributed as dist

from memdiag.backends.calibrate import calibrate, failure
from memdiag.backends.registry import select
from memdiag.check.accounting import account_devices

MiB = 1024**2
ROWS: list[tuple[str, float, float, float, float, str]] = []


def fmt(n: float) -> str:
    return f"{n / MiB:.1f}"


SELECTION = select("cuda:0")


def reading():  # type: ignore[no-untyped-def]
    merged = None
    for backend in SELECTION.readers("cuda:0"):
        r = backend.read("cuda:0")
        merged = r if merged is None else merged.merged(r)
    return merged


def step(name: str) -> None:
    torch.cuda.synchronize()
    r = reading()
    acc = account_devices({"cuda:0": r}, ["cuda:0"])["cuda:0"]
    own = r.extra.get("own_used") or 0
    line = (
        f"{name}: NVML {fmt(own)} MiB, reserved {fmt(r.reserved or 0)}, outside "
        f"{fmt(own - (r.reserved or 0))}, named {acc.fraction * 100:.1f}%, "
        f"unnamed {fmt(acc.unnamed)} | {acc.describe_outside()}"
    )
    print(line, flush=True)
    ROWS.append((name, own, r.reserved or 0, acc.named, acc.unnamed, acc.describe_outside()))


def maps_has(*names: str) -> bool:
    with open("/proc/self/maps") as f:
        text = f.read()
    return any(n in text for n in names)


def main() -> None:
    print("torch", torch.__version__, "cuda", torch.version.cuda, flush=True)
    uuid = reading().extra.get("uuid")
    t0 = time.perf_counter()
    cal = calibrate(0, str(uuid), nccl=True)
    print(f"calibration ({time.perf_counter() - t0:.1f} s):", cal, failure(0), flush=True)
    t0 = time.perf_counter()
    calibrate(0, str(uuid), nccl=True)
    print(f"calibration again ({(time.perf_counter() - t0) * 1e3:.2f} ms, cached)", flush=True)
    print("cuDNN engines mapped before any conv:", maps_has("libcudnn_engines", "libcudnn_ops"))

    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    torch.zeros(1, device=dev)
    step("context")
    a = torch.randn(1024, 1024, device=dev)
    (a @ a).sum().item()
    (a.bfloat16() @ a.bfloat16()).sum().item()
    torch._C._cuda_clearCublasWorkspaces()
    step("matmul (cuBLAS)")
    x = torch.randn(2, 8, 32, 32, device=dev)
    torch.nn.Conv2d(8, 8, 3, padding=1).to(dev)(x).sum().item()
    print("cuDNN engines mapped after a conv:", maps_has("libcudnn_engines", "libcudnn_ops"))
    step("conv (cuDNN)")
    for value in (torch.softmax(a, 0), torch.sigmoid(a), torch.cumsum(a, 0)):
        value.sum().item()
    torch.topk(a, 8).values.sum().item()
    step("softmax/topk/cumsum kernels")
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=dev)
    t = torch.ones(1024, device=dev)
    dist.all_reduce(t)
    t.sum().item()
    step("NCCL group, all_reduce")
    from outside_engine import CuMemAllocator

    allocator = CuMemAllocator()
    allocator.malloc(0, 512 * MiB)
    step("cuMem 512 MiB")
    import cupy

    block = cupy.zeros(320 * MiB // 4, dtype=cupy.float32)
    step("CuPy 320 MiB")
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 1024), torch.nn.GELU(), torch.nn.LayerNorm(1024)
    ).to(dev)
    compiled = torch.compile(model)
    compiled(a).sum().item()
    try:
        from triton.compiler.compiler import CompiledKernel

        kernels = [o for o in gc.get_objects() if type(o) is CompiledKernel]
        loaded = [k for k in kernels if getattr(k, "module", None) is not None]
        cubin = sum(len(k.asm.get("cubin", b"")) for k in loaded)
        print(f"triton: {len(kernels)} kernels, {len(loaded)} loaded, cubin {cubin} B")
    except Exception as exc:  # noqa: BLE001
        print("triton count failed:", exc)
    step("torch.compile (Triton)")
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        model(a)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        y = model(a)
    g.replay()
    step("CUDA graph captured")
    del g, y
    torch.cuda.empty_cache()
    step("graph deleted")
    allocator.free_all()
    step("cuMem freed")
    del block
    cupy.get_default_memory_pool().free_all_blocks()
    step("CuPy pool freed")
    dist.destroy_process_group()
    step("process group destroyed")
    del compiled
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    step("torch.compile reset (shutdown done)")
    print("\n| step | NVML MiB | torch reserved | named | not named | named % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, own, reserved, named, unnamed, _ in ROWS:
        share = 100 * named / own if own else 100.0
        print(
            f"| {name} | {fmt(own)} | {fmt(reserved)} | {fmt(named)} | {fmt(unnamed)} | {share:.1f}% |"
        )
    print("\nlast step's buckets:", ROWS[-1][5])


if __name__ == "__main__":
    main()

"""Real-GPU readings for memdiag, run on the device machine (see README.md here).

    python tests/gpu/probe_gpu.py

Each probe runs in a fresh subprocess where process state matters; the last thing
printed is a short table.  Nothing here runs in CI (no GPU there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
ROWS: list[tuple[str, str]] = []


def py(code: str, timeout: int = 300) -> dict[str, object]:
    """Run code in a fresh interpreter; it prints one JSON object last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


MiB = 1024**2


def context_and_counters() -> None:
    r = py("""
        import json, os, torch
        from memdiag.backends.nvml import NvmlBackend
        nv = NvmlBackend(); assert nv.probe().available, nv.probe().reason
        before = nv.read("cuda:0").process_used
        torch.zeros(1, device="cuda"); torch.cuda.synchronize()
        ctx = nv.read("cuda:0")
        x = torch.empty(1024**3, dtype=torch.uint8, device="cuda")
        live = nv.read("cuda:0"); a1, r1 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        del x
        cached = nv.read("cuda:0"); a2, r2 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        torch.cuda.empty_cache()
        emptied = nv.read("cuda:0")
        print(json.dumps(dict(before=before, ctx=ctx.process_used, ctx_reserved=torch.cuda.memory_reserved(),
            live=live.process_used, a1=a1, r1=r1, cached=cached.process_used, a2=a2, r2=r2,
            emptied=emptied.process_used)))
    """)
    print("counters:", r)
    if "error" in r:
        ROWS.append(("counters", str(r["error"])))
        return
    ROWS.append(
        (
            "CUDA context (NVML, this pid, before->after init)",
            f"{r['before']} -> {int(r['ctx']) / MiB:.0f} MiB",
        )
    )
    ROWS.append(
        (
            "1 GiB live: allocated / reserved / NVML pid",
            f"{r['a1'] / MiB:.0f} / {r['r1'] / MiB:.0f} / {int(r['live']) / MiB:.0f} MiB",
        )
    )
    ROWS.append(
        (
            "freed, cached: allocated / reserved / NVML pid",
            f"{r['a2'] / MiB:.0f} / {r['r2'] / MiB:.0f} / {int(r['cached']) / MiB:.0f} MiB",
        )
    )
    ROWS.append(("after empty_cache: NVML pid", f"{int(r['emptied']) / MiB:.0f} MiB"))


def cublas_and_lazy_modules() -> None:
    r = py("""
        import json, torch
        from memdiag.backends.nvml import NvmlBackend
        nv = NvmlBackend(); nv.probe()
        torch.zeros(1, device="cuda"); torch.cuda.synchronize()
        out0 = nv.read("cuda:0").process_used - torch.cuda.memory_reserved()
        a0 = torch.cuda.memory_allocated()
        x = torch.randn(1024, 1024, device="cuda"); y = x @ x; del x, y; torch.cuda.synchronize()
        a1 = torch.cuda.memory_allocated()
        out1 = nv.read("cuda:0").process_used - torch.cuda.memory_reserved()
        torch._C._cuda_clearCublasWorkspaces()
        a2 = torch.cuda.memory_allocated()
        z = torch.randn(64, 3, 32, 32, device="cuda"); torch.nn.functional.conv2d(z, torch.randn(8,3,3,3, device="cuda")).sum().item()
        torch.softmax(torch.randn(4096, 4096, device="cuda"), -1).topk(5); torch.cuda.synchronize()
        out2 = nv.read("cuda:0").process_used - torch.cuda.memory_reserved()
        print(json.dumps(dict(a0=a0, a1=a1, a2=a2, out0=out0, out1=out1, out2=out2)))
    """)
    print("cublas:", r)
    if "error" in r:
        ROWS.append(("cublas", str(r["error"])))
        return
    ROWS.append(
        (
            "cuBLAS workspace after first matmul (allocated)",
            f"{(r['a1'] - r['a0']) / MiB:.1f} MiB; after clear {(r['a2'] - r['a0']) / MiB:.1f} MiB",
        )
    )
    ROWS.append(
        (
            "outside PyTorch: ctx / +cuBLAS / +conv,softmax,topk",
            f"{r['out0'] / MiB:.0f} / {r['out1'] / MiB:.0f} / {r['out2'] / MiB:.0f} MiB",
        )
    )


def fork_safety() -> None:
    r = py("""
        import json, os, torch
        from memdiag.backends.registry import select
        sel = select("auto")
        devs = sel.devices
        init = torch.cuda.is_initialized()
        pid = os.fork()
        if pid == 0:
            try:
                torch.zeros(1, device="cuda"); torch.cuda.synchronize(); os._exit(0)
            except Exception:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(dict(devices=list(devs), initialized=init, child_ok=os.waitstatus_to_exitcode(status) == 0,
              backends=[b.name for b in sel.backends], notices=list(sel.notices))))
    """)
    print("fork:", r)
    ROWS.append(("select('auto') devices / backends", f"{r.get('devices')} / {r.get('backends')}"))
    ROWS.append(
        (
            "CUDA initialised by select(); forked child can use CUDA",
            f"{r.get('initialized')}; {r.get('child_ok')}",
        )
    )


def examples() -> None:
    bugs = [
        "none",
        "lru_cache",
        "gc_freeze",
        "rope_cache",
        "workspace_singleton",
        "resize_no_empty_cache",
        "kv_cache",
        "thread",
    ]
    for bug in bugs:
        args = ["--fixed"] if bug == "none" else ["--bug", bug]
        out = ROOT / f"ex_{bug}.json"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "memdiag",
                "run",
                "--json",
                str(out),
                "examples/toy_engine.py",
                "--device",
                "cuda",
                *args,
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
            cwd=ROOT,
        )
        dt = time.perf_counter() - t0
        print(f"--- example {bug}: exit {proc.returncode}\n{proc.stderr[-4000:]}")
        top = ""
        if out.exists():
            data = json.loads(out.read_text())
            leaks = [f for f in data["findings"] if f["is_leak"]]
            notes = [f["kind"] for f in data["findings"] if not f["is_leak"]]
            if leaks:
                f = leaks[0]
                chain = f["retainers"][0]["chain_text"] if f["retainers"] else ""
                top = f"{f['kind']} {f['bytes'] / MiB:.1f} MiB {chain[:90]}"
            top += f" notes={notes}"
            out.unlink()
        ROWS.append((f"memdiag run toy_engine {bug}", f"exit {proc.returncode} ({dt:.1f}s) {top}"))


def cheap_path_cost() -> None:
    r = py("""
        import gc, json, statistics, time, torch
        from memdiag.check.tracker import Tracker
        from memdiag.heap.census import StorageLedger
        from memdiag.backends.registry import select
        torch.zeros(1, device="cuda")
        sel = select("cuda")  # built once, as the pytest plugin does
        ledger = StorageLedger(); ledger.refresh()
        model = [torch.randn(1024, 1024, device="cuda") for _ in range(200)]  # a realistic heap
        junk = [dict(a=i, b=[i]) for i in range(300_000)]
        def one(tr):
            t = torch.empty(16 * 1024**2, dtype=torch.uint8, device="cuda"); del t
        checks, starts, alt = [], [], []
        for i in range(300):
            t0 = time.perf_counter()
            tr = Tracker(device=sel, settle=0.0, ledger=ledger, collect_at_start=False).start()
            t1 = time.perf_counter()
            one(tr)
            t2 = time.perf_counter(); res = tr.check(); t3 = time.perf_counter(); tr.close()
            assert not res.leaked and res.cheap, res.summary()
            starts.append(t1 - t0); checks.append(t3 - t2)
            t4 = time.perf_counter(); gc.collect(); torch.cuda.empty_cache(); torch.cuda.memory_allocated(); alt.append(time.perf_counter() - t4)
        med = statistics.median
        print(json.dumps(dict(check_ms=med(checks)*1e3, start_ms=med(starts)*1e3, alt_ms=med(alt)*1e3, heap=len(gc.get_objects()))))
    """)
    print("cheap:", r)
    if "error" in r:
        ROWS.append(("cheap path", str(r["error"])))
        return
    ROWS.append(
        (
            "passing check (median of 300)",
            f"{r['check_ms']:.3f} ms; start {r['start_ms']:.3f} ms; heap {r['heap']} objs",
        )
    )
    ROWS.append(
        (
            "gc.collect()+empty_cache()+counters",
            f"{r['alt_ms']:.3f} ms (ratio {r['alt_ms'] / r['check_ms']:.0f}x)",
        )
    )


def alloc_stacks() -> None:
    out = ROOT / "stacks.json"
    cmd = [sys.executable, "-m", "memdiag", "run", "--alloc-stacks", "--json", str(out)]
    cmd += ["examples/toy_engine.py", "--device", "cuda", "--bug", "rope_cache"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    print("--- alloc stacks:", proc.returncode, proc.stderr[-3000:])
    sites = []
    if out.exists():
        data = json.loads(out.read_text())
        sites = [g.get("alloc_site") for f in data["findings"] for g in f["retainers"]]
        out.unlink()
    ROWS.append(("--alloc-stacks rope_cache: exit / sites", f"{proc.returncode} / {sites}"))


def main() -> None:
    wanted = set(sys.argv[1:])
    for probe in (
        context_and_counters,
        cublas_and_lazy_modules,
        fork_safety,
        cheap_path_cost,
        alloc_stacks,
        examples,
    ):
        if wanted and probe.__name__ not in wanted:
            continue
        t0 = time.perf_counter()
        try:
            probe()
        except Exception as exc:  # noqa: BLE001
            ROWS.append((probe.__name__, f"FAILED {type(exc).__name__}: {exc}"))
        print(f"[{probe.__name__} {time.perf_counter() - t0:.1f}s]", flush=True)
    width = max(len(k) for k, _ in ROWS)
    print("\n==== memdiag GPU probe ====")
    for key, value in ROWS:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()

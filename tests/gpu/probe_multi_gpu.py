"""Multi-GPU and multi-process readings, run on a 2-GPU device machine.

    python3 tests/gpu/probe_multi_gpu.py

NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends), as the device README asks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
ROWS: list[tuple[str, str]] = []
MiB = 1024**2

TWO_DEVICES = """
import json, torch, memdiag
from memdiag.backends.nvml import NvmlBackend
torch.zeros(1, device="cuda:0")
keep = []
with memdiag.track(device="auto", settle=0.5) as tr:
    keep.append(torch.empty(64 * 1024**2, dtype=torch.uint8, device="cuda:1"))
nv = NvmlBackend(); nv.probe()
print(json.dumps(dict(
    devices=[d.device for d in tr.result.devices],
    leaks=[(f.device, f.kind.value, f.nbytes) for f in tr.result.leaks],
    cuda1_process_used=nv.read("cuda:1").process_used)))
"""

CONTEXT_ONLY_WHERE_USED = """
import json, torch, memdiag
from memdiag.backends.nvml import NvmlBackend
torch.zeros(1, device="cuda:0")
with memdiag.track(device="auto", settle=0.2) as tr:
    x = torch.ones(1024, device="cuda:0"); del x
nv = NvmlBackend(); nv.probe()
print(json.dumps(dict(leaked=tr.result.leaked, cuda1_process_used=nv.read("cuda:1").process_used)))
"""

RANKED = """
import os, torch, torch.distributed as dist
import memdiag
rank = int(os.environ["RANK"]); local = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local)
memdiag.phase("create")
dist.init_process_group("nccl", device_id=torch.device("cuda", local))
t = torch.ones(1024, 1024, device="cuda"); dist.all_reduce(t)
KEEP = []
memdiag.phase("infer")
if rank == 1:
    KEEP.append(torch.empty(64 * 1024**2, dtype=torch.uint8, device="cuda"))
memdiag.phase("shutdown")
del t
if os.environ.get("LEAVE_PG") != "1":
    dist.destroy_process_group()
"""

WORKER_PARENT = """
import json, subprocess, sys, time, memdiag
child_code = "import torch, time; x = torch.empty(1024**3, dtype=torch.uint8, device='cuda:1'); print('ready', flush=True); time.sleep(60)"
with memdiag.track(device="auto", settle=1.0) as tr:
    memdiag.phase("create")
    child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    memdiag.phase("shutdown")  # forgets to stop the worker
child.kill(); child.wait()
print(json.dumps(dict(leaks=[(f.device, f.kind.value, f.nbytes, f.message[:160]) for f in tr.result.leaks])))
"""


def py(code: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:])
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torchrun(tmp: Path, leave_pg: bool) -> None:
    script = tmp / "ranked.py"
    script.write_text(RANKED)
    out = tmp / f"out_pg{int(leave_pg)}.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "memdiag",
        "run",
        "--json",
        str(out),
        str(script),
    ]
    env = {**ENV, "LEAVE_PG": "1" if leave_pg else "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    print(f"--- torchrun leave_pg={leave_pg}: rc {proc.returncode}\n{proc.stderr[-5000:]}")
    merged = subprocess.run(
        [
            sys.executable,
            "-m",
            "memdiag",
            "merge",
            str(tmp / f"out_pg{int(leave_pg)}.rank0.json"),
            str(tmp / f"out_pg{int(leave_pg)}.rank1.json"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        cwd=ROOT,
    )
    print(merged.stdout[-3000:], merged.stderr[-1000:])
    summary = []
    for rank in (0, 1):
        path = tmp / f"out_pg{int(leave_pg)}.rank{rank}.json"
        if path.exists():
            data = json.loads(path.read_text())
            summary.append(
                (rank, [(f["kind"], f["bytes"] // MiB) for f in data["findings"] if f["is_leak"]])
            )
    ROWS.append(
        (
            f"torchrun 2 ranks NCCL, leave_pg={leave_pg}: merge rc / leaks per rank",
            f"{merged.returncode} / {summary}",
        )
    )


def main() -> None:
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout)
    r = py(TWO_DEVICES)
    ROWS.append(
        ("auto devices; leak on cuda:1 only -> leaks", f"{r.get('devices')} -> {r.get('leaks')}")
    )
    r = py(CONTEXT_ONLY_WHERE_USED)
    ROWS.append(
        (
            "program uses cuda:0 only: leaked / NVML this pid on cuda:1",
            f"{r.get('leaked')} / {r.get('cuda1_process_used')}",
        )
    )
    r = py(WORKER_PARENT)
    ROWS.append(("child holding 1 GiB on cuda:1 left alive", str(r.get("leaks", r))))
    tmp = ROOT / "mgpu_tmp"
    tmp.mkdir(exist_ok=True)
    torchrun(tmp, leave_pg=False)
    torchrun(tmp, leave_pg=True)
    width = max(len(k) for k, _ in ROWS)
    print("\n==== memdiag multi-GPU probe ====")
    for key, value in ROWS:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()

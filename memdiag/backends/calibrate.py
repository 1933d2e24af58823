"""What a fresh process costs on a device, measured once: context, cuBLAS, cuDNN, NCCL.

Memory outside PyTorch's allocator is charged to the process by the driver but has no
counter: the CUDA context (module images, stacks, the driver's heaps), the handles of
cuBLAS/cuBLASLt and cuDNN (their kernels and state), NCCL communicators.  Their sizes
depend on the device, the driver and the libraries, not on the program, so they are
measured once per device in a fresh child process (``sys.executable``, the same
environment; never ``fork``, and nothing in this process touches the device): the
NVML usage of the child right after its context is created and before torch
allocates, then the growth outside torch's reserved memory after a matmul (cuBLAS,
cuBLASLt), a convolution (cuDNN) and, when asked, an all-reduce over a one-rank NCCL
process group.

Results are cached in this process and on disk (``$MEMDIAG_CACHE_DIR``, else
``~/.cache/memdiag``), keyed by the device's UUID, the torch version and the
variables that change the context's size.  ``MEMDIAG_CALIBRATE=0`` turns the child
off; then the sizes are unknown and the accounting says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Calibration", "calibrate", "calibration_key", "clear_cache", "failure"]

_ENV_KEYS = ("CUDA_MODULE_LOADING", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF")
_TIMEOUT_S = 120.0
_MEMO: dict[str, Calibration | None] = {}
_FAILURES: dict[int, str] = {}


@dataclass(frozen=True)
class Calibration:
    """Bytes a fresh process is charged outside torch's allocator on one device.

    ``context``: right after the context was created (before any torch allocation);
    ``blas``: added by the first matmuls (cuBLAS + cuBLASLt handles, their kernels);
    ``dnn``: added by the first convolution (cuDNN handle, its kernels);
    ``nccl``: added by a one-rank NCCL communicator (``None``: not measured);
    ``nccl_kept``: what of it stays after ``destroy_process_group()`` (NCCL's kernels
    and process-wide state).
    """

    context: int
    blas: int
    dnn: int
    nccl: int | None = None
    nccl_kept: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {
            "context": self.context,
            "blas": self.blas,
            "dnn": self.dnn,
            "nccl": self.nccl,
            "nccl_kept": self.nccl_kept,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        nccl, kept = data.get("nccl"), data.get("nccl_kept")
        return cls(
            context=int(data["context"]),
            blas=int(data["blas"]),
            dnn=int(data["dnn"]),
            nccl=None if nccl is None else int(nccl),
            nccl_kept=None if kept is None else int(kept),
        )


Runner = Callable[[int, bool], "dict[str, Any] | None"]
"""(torch device index, measure NCCL too) -> the child's JSON, or ``None``."""


def calibration_key(uuid: str, *, nccl: bool) -> str:
    torch: Any = sys.modules.get("torch")
    version = str(getattr(torch, "__version__", "?"))
    env = ",".join(f"{k}={os.environ.get(k, '')}" for k in _ENV_KEYS)
    return f"{uuid}|torch {version}|{env}|{'nccl' if nccl else 'base'}"


def _cache_file() -> Path:
    root = os.environ.get("MEMDIAG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "memdiag"
    )
    return Path(root) / "calibration.json"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(key: str, value: Calibration) -> None:
    path = _cache_file()
    data = _load()
    data[key] = value.to_json()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measured again next time


def clear_cache() -> None:
    """Forget what this process measured (the disk cache stays)."""
    _MEMO.clear()
    _FAILURES.clear()


def failure(index: int) -> str | None:
    """Why the last calibration of torch device ``index`` failed in this process."""
    return _FAILURES.get(index)


def calibrate(
    index: int, uuid: str, *, nccl: bool = False, runner: Runner | None = None
) -> Calibration | None:
    """The sizes for torch device ``index`` (NVML ``uuid``), measured once; ``None`` when
    they cannot be measured here (calibration off, no per-process NVML figure, the
    child failed)."""
    key = calibration_key(uuid, nccl=nccl)
    # A measurement with NCCL holds every figure one without it needs.
    keys = [key] if nccl else [key, calibration_key(uuid, nccl=True)]
    for known in keys:
        if _MEMO.get(known) is not None or (known == key and key in _MEMO):
            return _MEMO[known]
    stored = _load()
    for known in keys:
        found = _parse(stored.get(known))
        if found is not None:
            _MEMO[key] = found
            return found
    if os.environ.get("MEMDIAG_CALIBRATE", "1") == "0" and runner is None:
        _MEMO[key] = None
        return None
    result = _parse((runner or _run_child)(index, nccl))
    _MEMO[key] = result
    if result is not None:
        _store(key, result)
    return result


def _parse(raw: object) -> Calibration | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Calibration.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return None


def _run_child(index: int, nccl: bool) -> dict[str, Any] | None:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    env["MEMDIAG_CALIBRATE"] = "0"
    args = [sys.executable, "-c", _CHILD, str(index), "1" if nccl else "0"]
    try:
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        _FAILURES[index] = f"{type(exc).__name__}: {exc}"
        return None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        _FAILURES[index] = lines[-1] if lines else f"exit status {done.returncode}"
        return None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


# The child: one device, measured step by step.  NVML per-process usage minus torch's
# reserved bytes is what lies outside torch's allocator.
_CHILD = r"""
import json, os, sys, time
index, want_nccl = int(sys.argv[1]), sys.argv[2] == "1"
import torch
from memdiag.backends.nvml import _import_pynvml, visible_handles
nvml = _import_pynvml()
nvml.nvmlInit()
handle = visible_handles(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))[index][0]
pid = os.getpid()

def outside():
    torch.cuda.synchronize(index)
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    used = None
    for _ in range(20):
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == pid and p.usedGpuMemory is not None:
                used = int(p.usedGpuMemory)
        if used is not None:
            break
        time.sleep(0.05)
    if used is None:
        raise SystemExit("no per-process NVML figure for this process")
    return used - torch.cuda.memory_reserved(index)

dev = torch.device("cuda", index)
torch.cuda.set_device(dev)
torch.zeros(1, device=dev)
context = outside()
a = torch.randn(256, 256, device=dev)
(a @ a).sum().item()
(a.bfloat16() @ a.bfloat16()).float().sum().item()
torch.nn.functional.linear(a, a, a[0]).sum().item()
blas = outside() - context
x = torch.randn(1, 4, 16, 16, device=dev)
w = torch.randn(4, 4, 3, 3, device=dev)
torch.nn.functional.conv2d(x, w, padding=1).sum().item()
dnn = outside() - context - blas
out = {"context": context, "blas": max(0, blas), "dnn": max(0, dnn), "nccl": None}
if want_nccl:
    import torch.distributed as dist
    before = outside()
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                            device_id=dev)
    t = torch.ones(1024, device=dev)
    dist.all_reduce(t)
    t.sum().item()
    out["nccl"] = max(0, outside() - before)
    dist.destroy_process_group()
    out["nccl_kept"] = max(0, outside() - before)
print(json.dumps(out))
"""

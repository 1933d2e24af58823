"""An engine whose memory lies mostly outside PyTorch's allocator, under `memdiag run`.

    python3 -m memdiag run --device cuda:0 tests/gpu/outside_engine.py \
        [--keep pg|cumem|cupy] [--accounting FILE]

create: model weights (cuBLAS at the first matmul), a convolution (cuDNN), a one-rank
NCCL process group (its communicator), 512 MiB mapped by a cuMem allocator with the
layout of vLLM's sleep-mode ``CuMemAllocator`` (cuMemCreate/cuMemMap through
cuda-python, outside torch's counters), 320 MiB in CuPy's memory pool.
--accounting FILE: at full load, memdiag's accounting of what NVML charges this
process (buckets, fraction named) is written to FILE as JSON.
shutdown: everything freed, except what --keep names.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os

import torch
import torch.distributed as dist

MiB = 1024**2
ENGINE: dict[str, object] = {}


@dataclasses.dataclass
class AllocationData:
    handle: tuple[int, int, int, int]
    tag: str


class CuMemAllocator:
    """vLLM's layout: ``pointer_to_data`` -> ``AllocationData(handle=(device, size,
    pointer, handle))``; memory mapped with the CUDA driver's virtual memory API."""

    def __init__(self) -> None:
        from cuda.bindings import driver

        self.cu = driver
        self.pointer_to_data: dict[int, AllocationData] = {}
        (err,) = driver.cuInit(0)
        assert int(err) == 0, err

    def _ok(self, result: tuple[object, ...]) -> object:
        err, *rest = result
        assert int(err) == 0, err  # type: ignore[call-overload]
        return rest[0] if rest else None

    def malloc(self, device: int, size: int, tag: str = "weights") -> int:
        cu = self.cu
        prop = cu.CUmemAllocationProp()
        prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = device
        gran = int(
            self._ok(  # type: ignore[call-overload]
                cu.cuMemGetAllocationGranularity(
                    prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM
                )
            )
        )
        size = (size + gran - 1) // gran * gran
        handle = self._ok(cu.cuMemCreate(size, prop, 0))
        ptr = self._ok(cu.cuMemAddressReserve(size, 0, 0, 0))
        self._ok(cu.cuMemMap(ptr, size, 0, handle, 0))
        access = cu.CUmemAccessDesc()
        access.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        access.location.id = device
        access.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self._ok(cu.cuMemSetAccess(ptr, size, [access], 1))
        key = int(ptr)  # type: ignore[call-overload]
        self.pointer_to_data[key] = AllocationData((device, size, key, int(handle)), tag)  # type: ignore[call-overload]
        return key

    def free_all(self) -> None:
        cu = self.cu
        for ptr, data in list(self.pointer_to_data.items()):
            _, size, _, handle = data.handle
            self._ok(cu.cuMemUnmap(ptr, size))
            self._ok(cu.cuMemRelease(cu.CUmemGenericAllocationHandle(handle)))
            self._ok(cu.cuMemAddressFree(ptr, size))
            del self.pointer_to_data[ptr]


def create() -> dict[str, object]:
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(4)]).to(dev)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(dev)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=dev)
    allocator = CuMemAllocator()
    allocator.malloc(0, 512 * MiB)
    import cupy

    block = cupy.zeros(320 * MiB // 4, dtype=cupy.float32)
    return {"model": model, "conv": conv, "allocator": allocator, "cupy": block}


def infer(engine: dict[str, object]) -> None:
    x = torch.randn(64, 1024, device="cuda")
    y = engine["model"](x)  # type: ignore[operator]
    img = torch.randn(2, 8, 32, 32, device="cuda")
    z = engine["conv"](img)  # type: ignore[operator]
    total = y.sum() + z.sum()
    dist.all_reduce(total)
    total.item()


def write_accounting(path: str) -> None:
    import memdiag
    from memdiag.check.accounting import account_devices

    tracker = memdiag.active_tracker()
    assert tracker is not None, "run under memdiag run"
    acc = account_devices(tracker.read(), ["cuda:0"])["cuda:0"]
    with open(path, "w", encoding="utf-8") as out:
        json.dump(acc.to_json(), out, indent=1)
    print(acc.describe())


def shutdown(engine: dict[str, object], keep: str) -> None:
    if keep != "pg":
        dist.destroy_process_group()
    if keep == "cumem":
        ENGINE["allocator"] = engine["allocator"]
    else:
        engine["allocator"].free_all()  # type: ignore[attr-defined]
    if keep == "cupy":
        ENGINE["cupy"] = engine["cupy"]
    engine.clear()
    gc.collect()
    if keep != "cupy":
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", choices=["pg", "cumem", "cupy"], default="")
    parser.add_argument("--accounting", default="")
    args = parser.parse_args()
    import memdiag

    memdiag.phase("create")
    engine = create()
    memdiag.phase("infer")
    infer(engine)
    if args.accounting:
        write_accounting(args.accounting)
    memdiag.phase("shutdown")
    shutdown(engine, args.keep)


if __name__ == "__main__":
    main()

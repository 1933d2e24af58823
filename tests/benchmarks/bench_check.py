"""What a passing check costs, against the obvious alternative, in the same run.

    python tests/benchmarks/bench_check.py [--rounds 300] [--objects 300000] [--device auto]

Builds a realistic heap (``--objects`` gc-tracked objects plus 200 live 1 MiB tensors
on the device), then times, per round: a tracker baseline (``start``), one allocation
and free of 16 MiB, and the check (``check``); and the common alternative,
``gc.collect()`` + ``empty_cache()`` + reading the allocator counter.  Prints the
medians and their ratio.  On CPU the check is a census (a heap walk) and the
alternative's counter is the resident set size, so the ratio is far smaller there.
Not a test file: timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time

import torch

from memdiag.backends.registry import select
from memdiag.check.tracker import Tracker
from memdiag.heap.census import StorageLedger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--objects", type=int, default=300_000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    selection = select(args.device)
    device = selection.devices[0]
    on_gpu = device != "cpu"
    torch_device = device if on_gpu else "cpu"
    junk = [{"i": i, "l": [i]} for i in range(args.objects)]
    model = [torch.randn(256, 1024, device=torch_device) for _ in range(200)]
    ledger = StorageLedger()
    ledger.refresh()
    starts: list[float] = []
    checks: list[float] = []
    alternative: list[float] = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        tracker = Tracker(device=selection, settle=0.0, ledger=ledger, collect_at_start=False)
        tracker.start()
        t1 = time.perf_counter()
        scratch = torch.empty(16 * 1024**2, dtype=torch.uint8, device=torch_device)
        del scratch
        t2 = time.perf_counter()
        result = tracker.check()
        t3 = time.perf_counter()
        tracker.close()
        assert not result.leaked, result.summary()
        starts.append(t1 - t0)
        checks.append(t3 - t2)
        t4 = time.perf_counter()
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.memory_allocated()
        else:
            resource.getrusage(resource.RUSAGE_SELF)
        alternative.append(time.perf_counter() - t4)
    med = statistics.median
    heap = len(gc.get_objects())
    print(f"device {device}, heap {heap} gc objects, {args.rounds} rounds")
    print(f"{'passing check (median)':<40} {med(checks) * 1e3:8.3f} ms")
    print(f"{'baseline start (median)':<40} {med(starts) * 1e3:8.3f} ms")
    print(f"{'gc.collect()+empty_cache()+counter':<40} {med(alternative) * 1e3:8.3f} ms")
    print(f"{'ratio alternative / check':<40} {med(alternative) / med(checks):8.1f}x")
    del junk, model


if __name__ == "__main__":
    main()

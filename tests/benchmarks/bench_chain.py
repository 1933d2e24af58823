"""The retainer analysis on long chains: time and memory must grow linearly.

Run as a script (not collected by pytest)::

    python tests/benchmarks/bench_chain.py [--depths 25000,50000,100000] [--objgraph-budget 60]

For each depth it builds a module global holding a chain of that many nested
containers (alternating lists and dicts) with one tensor at the end, then prints:

- one bare pass ``for o in gc.get_objects(): gc.get_referents(o)`` and the analysis'
  time, and their ratio;
- the analysis' peak extra memory under tracemalloc, per heap object and per link;
- the length of the chain shown (bounded: first and last links, the rest elided).

Time and memory per link stay flat as the depth grows (linear); before, the analysis
kept a copy of the path's shape per node (depth 10k: 1 GB, 100k: out of memory).
objgraph's ``find_backref_chain`` is timed on the smallest depth with a time budget
(it calls ``gc.get_referrers`` once per node: a whole-heap scan each).
Ratios are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
import types
from typing import Any

from memdiag.heap.view import HeapView
from memdiag.retainers import analyze_heap

_MODULE = "memdiag_bench_chain"


def _build(depth: int) -> tuple[types.ModuleType, dict[int, int], Any]:
    import torch

    module = types.ModuleType(_MODULE)
    sys.modules[_MODULE] = module
    tensor = torch.zeros(1024)
    node: Any = [tensor]
    for index in range(depth - 1):
        node = {"next": node} if index % 2 else [node]
    module.chain = node
    storage = tensor.untyped_storage()
    return module, {storage._cdata: storage.nbytes()}, tensor


def _bare() -> float:
    objects = gc.get_objects()
    referents = gc.get_referents
    start = time.perf_counter()
    for obj in objects:
        referents(obj)
    elapsed = time.perf_counter() - start
    del objects
    return elapsed


def _measure(depth: int) -> dict[str, Any]:
    module, targets, tensor = _build(depth)
    try:
        gc.collect()
        heap = len(gc.get_objects())
        bare = min(_bare() for _ in range(3))
        view = HeapView(objects=gc.get_objects(), frozen_ids=frozenset(), in_child=False)
        start = time.perf_counter()
        report = analyze_heap(view, targets)
        elapsed = time.perf_counter() - start
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            analyze_heap(view, targets)
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        del view
        (group,) = report.groups
        return {
            "depth": depth,
            "heap": heap,
            "bare_s": bare,
            "analysis_s": elapsed,
            "peak": peak,
            "shown": len(group.chain),
        }
    finally:
        del sys.modules[_MODULE]
        module.__dict__.clear()
        del tensor
        gc.collect()


def _objgraph(depth: int, budget: float) -> tuple[float | None, int]:
    """Seconds objgraph takes to find the chain and the links it found, or ``None``
    past ``budget`` s (run last: a search past its budget is left running in a daemon
    thread).  The tensor reaches the thread through a weak reference only, so the
    thread itself is no shortcut to a module."""
    import threading
    import weakref

    import objgraph  # type: ignore[import-untyped]

    module, _, tensor = _build(depth)
    ref = weakref.ref(tensor)
    del tensor
    done: list[tuple[float, int]] = []

    def run() -> None:
        target = ref()
        start = time.perf_counter()
        chain = objgraph.find_backref_chain(target, objgraph.is_proper_module, max_depth=depth + 2)
        done.append((time.perf_counter() - start, len(chain)))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(budget)
    del module
    return done[0] if done else (None, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="25000,50000,100000", help="comma-separated depths")
    parser.add_argument(
        "--objgraph-budget",
        type=float,
        default=60.0,
        help="seconds objgraph may take on the smallest depth (0: skip)",
    )
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    print(f"load average before: {_load()}")
    rows = [_measure(depth) for depth in depths]
    print(
        f"{'depth':>8} {'heap':>9} {'bare s':>7} {'analysis s':>10} {'x bare':>7} "
        f"{'us/link':>8} {'peak MiB':>9} {'B/heap obj':>10} {'B/link':>7} {'shown':>6}"
    )
    for row in rows:
        print(
            f"{row['depth']:>8,} {row['heap']:>9,} {row['bare_s']:>7.3f} "
            f"{row['analysis_s']:>10.2f} {row['analysis_s'] / row['bare_s']:>7.1f} "
            f"{row['analysis_s'] / row['depth'] * 1e6:>8.1f} {row['peak'] / 2**20:>9.1f} "
            f"{row['peak'] / row['heap']:>10.1f} {row['peak'] / row['depth']:>7.0f} "
            f"{row['shown']:>6}"
        )
    first, last = rows[0], rows[-1]
    if len(rows) > 1:
        grow = last["depth"] / first["depth"]
        print(
            f"depth x{grow:.1f}: time x{last['analysis_s'] / first['analysis_s']:.1f}, "
            f"peak memory x{last['peak'] / first['peak']:.1f} (linear: both about x{grow:.1f})"
        )
    objgraph_s, links = (
        _objgraph(first["depth"], args.objgraph_budget) if args.objgraph_budget else (None, 0)
    )
    if objgraph_s is not None:
        print(
            f"objgraph find_backref_chain at depth {first['depth']:,}: {objgraph_s:.1f} s "
            f"({objgraph_s / first['analysis_s']:.0f}x the analysis), a chain of {links} objects"
        )
    elif args.objgraph_budget > 0:
        print(
            f"objgraph find_backref_chain at depth {first['depth']:,}: not done after "
            f"{args.objgraph_budget:.0f} s (over {args.objgraph_budget / first['analysis_s']:.0f}x "
            "the analysis)"
        )
    print(f"load average after: {_load()}")
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())

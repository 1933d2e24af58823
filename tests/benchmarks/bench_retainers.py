"""Benchmark of the retainer analysis against a bare heap pass and objgraph.

Run as a script (not collected by pytest)::

    python tests/benchmarks/bench_retainers.py [--objects 2000000] [--objgraph-sample 20]

It builds a heap of about ``--objects`` gc-tracked objects with torch imported, leaks
1,000 tensors behind one retainer (an ``lru_cache`` keyed by a model's bound method)
and 10 behind others (a module global, a class attribute, a closure), then prints:

- the time of one bare pass ``for o in gc.get_objects(): gc.get_referents(o)``;
- the time of the full analysis and its ratio to the bare pass (target: <= 3x);
- objgraph's ``find_backref_chain`` per tensor, timed on a sample and extrapolated
  to every leaked tensor, and its ratio to the analysis (target: >= 100x);
- the analysis' peak extra memory per heap object under tracemalloc (aim: < 100 B);
- with ``--scaling``, the same at smaller heaps: time and memory per heap object and
  the ratio to the bare pass at each size (linear: per-object figures stay flat).

Ratios are printed, not asserted: they depend on the machine; the load average is
printed with them (other processes slow both passes, not always alike).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time
import tracemalloc
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from memdiag.heap.view import HeapView
from memdiag.retainers import RetainerReport, analyze_heap

_FILLER = "memdiag_bench_filler"


class _Record:
    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"record-{index}"
        self.tags = [index, index + 1]
        self.meta: dict[str, object] = {"index": index, "parent": None}


def _fill(module: Any, objects: int) -> None:
    """Grow the heap to about ``objects`` gc objects: records, dicts, lists, closures."""
    roots: list[object] = []
    module.roots = roots
    need = objects - len(gc.get_objects())
    made = 0
    while made < need:
        batch: list[object] = []
        for index in range(100):
            record = _Record(index)  # the record, its list and its dict
            record.meta["parent"] = batch
            batch.append(record)

            def callback(record: _Record = record) -> int:
                return record.index

            batch.append(callback)  # a function and its defaults tuple
        roots.append(batch)
        made += 100 * 5 + 1


@functools.cache
def _supports_kw(fn: Callable[..., Any], kw: str) -> bool:
    return kw in getattr(fn, "__name__", "")


def _leak(module: Any) -> dict[int, int]:
    """1,000 tensors behind an lru_cache, 10 behind three other roots."""
    import torch

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(Layer() for _ in range(500))

        def forward(self, x: Any) -> Any:
            return x

    class Holder:
        pinned: ClassVar[list[Any]] = [torch.zeros(8) for _ in range(3)]

    model = Model()
    _supports_kw(model.forward, "x")
    module.globals_leak = [torch.zeros(16) for _ in range(5)]
    module.Holder = Holder
    kept = [torch.zeros(32), torch.zeros(32)]

    def closure() -> int:
        return len(kept)

    module.closure = closure
    tensors = list(model.parameters()) + module.globals_leak + Holder.pinned + kept
    return {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}


@contextmanager
def _heap(objects: int) -> Iterator[dict[int, int]]:
    module = types.ModuleType(_FILLER)
    sys.modules[_FILLER] = module
    try:
        _fill(module, objects)
        targets = _leak(module)
        gc.collect()
        yield targets
    finally:
        _supports_kw.cache_clear()
        del sys.modules[_FILLER]
        module.__dict__.clear()
        gc.collect()


def _bare_pass() -> float:
    objects = gc.get_objects()
    referents = gc.get_referents
    start = time.perf_counter()
    for obj in objects:
        referents(obj)
    elapsed = time.perf_counter() - start
    del objects
    return elapsed


def _analysis(targets: dict[int, int]) -> tuple[float, RetainerReport]:
    view = HeapView(objects=gc.get_objects(), frozen_ids=frozenset(), in_child=False)
    start = time.perf_counter()
    report = analyze_heap(view, targets)
    elapsed = time.perf_counter() - start
    del view
    return elapsed, report


def _peak_bytes(targets: dict[int, int]) -> int:
    view = HeapView(objects=gc.get_objects(), frozen_ids=frozenset(), in_child=False)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        analyze_heap(view, targets)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        del view


def _objgraph_time(sample: int, budget_s: float) -> tuple[float, int]:
    """Seconds per tensor of ``objgraph.find_backref_chain`` over a timed sample."""
    import objgraph  # type: ignore[import-untyped]
    import torch

    tensors = [o for o in gc.get_objects() if type(o) is torch.nn.Parameter][:sample]
    done = 0
    start = time.perf_counter()
    for tensor in tensors:
        objgraph.find_backref_chain(tensor, objgraph.is_proper_module, max_depth=20)
        done += 1
        if time.perf_counter() - start > budget_s:
            break
    elapsed = time.perf_counter() - start
    del tensors
    return elapsed / max(done, 1), done


def run(
    objects: int,
    objgraph_sample: int = 20,
    objgraph_budget_s: float = 600.0,
    *,
    repeats: int = 3,
    memory: bool = True,
) -> dict[str, Any]:
    """Build the heap, measure, and return the figures (also used by a smoke test).

    Bare pass and analysis alternate ``repeats`` times and the fastest of each counts,
    so a busy machine skews both alike.
    """
    with _heap(objects) as targets:
        heap = len(gc.get_objects())
        bares: list[float] = []
        runs: list[tuple[float, RetainerReport]] = []
        for _ in range(repeats):
            bares.append(_bare_pass())
            runs.append(_analysis(targets))
        bare = min(bares)
        analysis, report = min(runs, key=lambda r: r[0])
        peak = _peak_bytes(targets) if memory else 0
        per_tensor, sampled = (0.0, 0)
        if objgraph_sample:
            per_tensor, sampled = _objgraph_time(objgraph_sample, objgraph_budget_s)
        tensors = sum(g.tensor_count for g in report.groups + report.unrooted)
    objgraph_total = per_tensor * len(targets)
    return {
        "heap_objects": heap,
        "bare_s": bare,
        "analysis_s": analysis,
        "ratio": analysis / bare if bare else float("inf"),
        "objgraph_per_tensor_s": per_tensor,
        "objgraph_sampled": sampled,
        "objgraph_total_s": objgraph_total,
        "objgraph_ratio": objgraph_total / analysis if analysis else float("inf"),
        "peak_bytes": peak,
        "bytes_per_object": peak / heap if heap else 0.0,
        "targets": len(targets),
        "tensors_found": tensors,
        "groups": [g.summary() for g in report.groups],
        "notes": list(report.notes),
    }


def _print_one(figures: dict[str, Any]) -> None:
    print(f"heap: {figures['heap_objects']:,} gc objects, {figures['targets']} leaked storages")
    print(f"bare referents pass: {figures['bare_s']:.3f} s")
    print(
        f"analysis:            {figures['analysis_s']:.3f} s  "
        f"({figures['ratio']:.2f}x bare; target <= 3x)"
    )
    if figures["objgraph_sampled"]:
        print(
            f"objgraph:            {figures['objgraph_per_tensor_s']:.3f} s per tensor over "
            f"{figures['objgraph_sampled']} tensors, {figures['objgraph_total_s']:.1f} s for all "
            f"({figures['objgraph_ratio']:.0f}x the analysis; target >= 100x)"
        )
    print(
        f"peak extra memory:   {figures['peak_bytes'] / 2**20:.1f} MiB, "
        f"{figures['bytes_per_object']:.1f} B per heap object (aim < 100)"
    )
    for line in figures["groups"] + figures["notes"]:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2_000_000, help="heap size in gc objects")
    parser.add_argument(
        "--scaling",
        default="0.25,0.5",
        help="also measure heaps of these fractions of --objects (linearity; '' to skip)",
    )
    parser.add_argument(
        "--objgraph-sample", type=int, default=20, help="tensors to time objgraph on (0: skip)"
    )
    parser.add_argument(
        "--objgraph-budget",
        type=float,
        default=600.0,
        help="stop sampling objgraph after this many s",
    )
    args = parser.parse_args(argv)
    fractions = [float(f) for f in args.scaling.split(",") if f.strip()]
    print(f"load average before: {_load()}")
    smaller = [run(int(args.objects * f), 0, repeats=2) for f in sorted(fractions)]
    figures = run(args.objects, args.objgraph_sample, args.objgraph_budget)
    _print_one(figures)
    if smaller:
        rows = [*smaller, figures]
        print(
            f"{'heap objects':>13} {'bare s':>7} {'analysis s':>10} {'x bare':>6} "
            f"{'us/object':>9} {'peak MiB':>9} {'B/object':>8}"
        )
        for row in rows:
            print(
                f"{row['heap_objects']:>13,} {row['bare_s']:>7.3f} {row['analysis_s']:>10.3f} "
                f"{row['ratio']:>6.2f} {row['analysis_s'] / row['heap_objects'] * 1e6:>9.2f} "
                f"{row['peak_bytes'] / 2**20:>9.1f} {row['bytes_per_object']:>8.1f}"
            )
        first, last = rows[0], rows[-1]
        grow = last["heap_objects"] / first["heap_objects"]
        print(
            f"heap x{grow:.1f}: time x{last['analysis_s'] / first['analysis_s']:.1f}, "
            f"peak memory x{last['peak_bytes'] / max(first['peak_bytes'], 1):.1f} "
            f"(linear: both at most about x{grow:.1f})"
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

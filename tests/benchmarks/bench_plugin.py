"""What ``pytest --gpu-leak-check`` costs a passing test suite.

    python tests/benchmarks/bench_plugin.py [--tests 200] [--device auto] [--size 1048576]

Generates a suite of passing tests that each allocate and free tensors (on cuda when
the selected device is an accelerator, else cpu) and runs it, each in a fresh pytest
subprocess, four ways:

- ``off``: plain pytest (the plugin is installed but not enabled);
- ``plugin``: ``--gpu-leak-check``; the plugin's own per-test overhead (baseline, phase
  readings, check) comes from its JSON report;
- ``gc+counters``: the common alternative, an autouse fixture doing ``gc.collect()``
  + ``empty_cache()`` + a memory counter before and after every test (on CPU there is
  no allocator counter: the resident set size stands in), timed inside the fixture;
- ``plugin-fake``: ``--gpu-leak-check --gpu-leak-device=fake``, the plugin and tracker
  with readings that cost nothing: the plugin's own cost, without any backend's.

Prints wall times, per-test overheads and ratios.  Not a test file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = """
import pytest
import torch

DEVICE = {device!r}

@pytest.mark.parametrize("i", range({tests}))
def test_alloc_and_free(i):
    x = torch.empty({size}, dtype=torch.uint8, device=DEVICE)
    y = x.float().sum()
    del x, y
"""

CONFTEST = """
import gc, json, os, time
import pytest

_TIMES = []

def _counter():
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if os.environ.get("BENCH_GC_FIXTURE"):
    @pytest.fixture(autouse=True)
    def _gc_and_counters():
        t0 = time.perf_counter()
        gc.collect()
        before = _counter()
        spent = time.perf_counter() - t0
        yield
        t0 = time.perf_counter()
        gc.collect()
        after = _counter()
        spent += time.perf_counter() - t0
        _TIMES.append(spent)
        assert after - before < 64 * 1024 * 1024, "memory grew"

    def pytest_sessionfinish(session):
        with open(os.environ["BENCH_GC_FIXTURE"], "w") as f:
            json.dump(_TIMES, f)
"""


@dataclass
class Run:
    name: str
    wall_s: float
    per_test_ms: float | None
    """Overhead measured inside the process, per test."""
    note: str = ""


def _pytest(workdir: Path, args: list[str], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"pytest {' '.join(args)} failed with exit code {proc.returncode}")
    return wall


def _plugin_overhead(report: Path) -> tuple[float, str]:
    data = json.loads(report.read_text())
    tests = [t for t in data["tests"] if t.get("checked")]
    cheap = sum(1 for t in tests if t.get("cheap"))
    per_test = sum(t["overhead_s"] for t in tests) / max(1, len(tests)) * 1e3
    return per_test, f"{cheap}/{len(tests)} on the cheap path; {data['settings']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=200, help="tests in the suite")
    parser.add_argument("--device", default="auto", help="--gpu-leak-device for the plugin runs")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes each test allocates")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant (best kept)")
    args = parser.parse_args(argv)

    import torch  # only to pick the device the tests allocate on

    tensor_device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="bench_plugin_") as tmp:
        work = Path(tmp)
        (work / "test_bench.py").write_text(
            textwrap.dedent(SUITE.format(device=tensor_device, tests=args.tests, size=args.size))
        )
        (work / "conftest.py").write_text(CONFTEST)
        env = {k: v for k, v in os.environ.items() if k != "BENCH_GC_FIXTURE"}
        variants: list[tuple[str, list[str], dict[str, str]]] = [
            ("off", [], env),
            ("plugin", ["--gpu-leak-check", f"--gpu-leak-device={args.device}"], env),
            ("gc+counters", [], {**env, "BENCH_GC_FIXTURE": str(work / "gc_times.json")}),
            ("plugin-fake", ["--gpu-leak-check", "--gpu-leak-device=fake"], env),
        ]
        runs: list[Run] = []
        for name, extra, run_env in variants:
            best: Run | None = None
            for _ in range(args.repeat):
                report = work / f"{name}.json"
                opts = [*extra, f"--gpu-leak-json={report}"] if extra else extra
                wall = _pytest(work, opts, run_env)
                per_test: float | None = None
                note = ""
                if extra:
                    per_test, note = _plugin_overhead(report)
                elif "BENCH_GC_FIXTURE" in run_env:
                    times = json.loads((work / "gc_times.json").read_text())
                    per_test = sum(times) / max(1, len(times)) * 1e3
                    note = "gc.collect() + empty_cache() + counter, before and after"
                run = Run(name, wall, per_test, note)
                if best is None or run.wall_s < best.wall_s:
                    best = run
            assert best is not None
            runs.append(best)

    off = runs[0].wall_s
    print(f"\n{args.tests} passing tests, each allocating {args.size} bytes on {tensor_device}")
    header = ("variant", "wall s", "vs off", "wall ms/test", "in-process ms/test")
    print(f"{header[0]:<13} {header[1]:>8} {header[2]:>8} {header[3]:>13} {header[4]:>19}")
    for run in runs:
        extra_ms = (run.wall_s - off) / args.tests * 1e3
        inproc = f"{run.per_test_ms:.3f}" if run.per_test_ms is not None else "-"
        print(
            f"{run.name:<13} {run.wall_s:>8.2f} {run.wall_s / off:>7.2f}x "
            f"{extra_ms:>+13.2f} {inproc:>19}   {run.note}"
        )
    plugin, gc_fixture = runs[1], runs[2]
    if plugin.per_test_ms and gc_fixture.per_test_ms:
        print(
            f"\nplugin / gc+counters, in-process per test: "
            f"{plugin.per_test_ms / gc_fixture.per_test_ms:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What ``pytest --gpu-leak-check`` costs a passing suite, timed from outside.

    python tests/benchmarks/bench_suite.py [--tests 300] [--heap 0] [--device cpu] [--runs 3]

Writes a suite of ``--tests`` passing tests that each allocate and free 1 MiB (on
the device: ``cuda`` when ``--device`` is ``cuda``/``auto`` and CUDA is available,
else ``cpu``), with a conftest that keeps ``--heap`` extra gc-tracked objects alive
for the whole session (a large application heap), and times WHOLE pytest runs, each
in a fresh process, three ways in the same call, interleaved run by run:

- ``plain``: pytest without the check (the plugin is installed, not enabled);
- ``check``: ``pytest --gpu-leak-check``;
- ``gc fixture``: the obvious alternative, an autouse fixture that runs
  ``gc.collect()`` and ``empty_cache()`` and reads the allocator counter after
  every test.

Prints the median wall time of ``--runs`` runs of each and the extra milliseconds
per test against ``plain``: ``(median - plain median) / tests``.  Nothing inside
the process is trusted: start-up, collection, reporting and the plugin's
bookkeeping are all in the figure.  Not a test file; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """
import pytest
import torch

DEVICE = {device!r}


@pytest.mark.parametrize("i", range({tests}))
def test_allocates_and_frees_one_mib(i):
    x = torch.ones(1 << 20, dtype=torch.uint8, device=DEVICE)
    assert int(x[-1]) == 1
    del x
"""

CONFTEST = """
import gc
import os

import pytest

# A large application heap, alive for the whole session.
_HEAP = [[i] for i in range({heap})]

if os.environ.get("BENCH_GC_FIXTURE"):

    @pytest.fixture(autouse=True)
    def _collect_and_empty_cache():
        yield
        import torch

        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
            torch.cuda.memory_allocated()
"""


def _run(workdir: Path, args: list[str], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"pytest {' '.join(args)} exited with {proc.returncode}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=300, help="passing tests in the suite")
    parser.add_argument("--heap", type=int, default=0, help="extra gc objects kept alive")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant (median)")
    args = parser.parse_args(argv)

    import torch  # only to choose where the tests allocate

    cuda = args.device in ("cuda", "auto") and torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    check_device = "auto" if cuda else "cpu"
    env = {k: v for k, v in os.environ.items() if k != "BENCH_GC_FIXTURE"}
    variants: list[tuple[str, list[str], dict[str, str]]] = [
        ("plain", [], env),
        ("check", ["--gpu-leak-check", f"--gpu-leak-device={check_device}"], env),
        ("gc fixture", [], {**env, "BENCH_GC_FIXTURE": "1"}),
    ]
    walls: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="bench_suite_") as tmp:
        work = Path(tmp)
        (work / "test_suite.py").write_text(SUITE.format(device=device, tests=args.tests))
        (work / "conftest.py").write_text(CONFTEST.format(heap=args.heap))
        _run(work, [], env)  # warm-up: imports and bytecode caches
        for _ in range(args.runs):
            for name, extra, run_env in variants:
                walls[name].append(_run(work, extra, run_env))

    plain = statistics.median(walls["plain"])
    print(
        f"{args.tests} passing tests, each allocating and freeing 1 MiB on {device}; "
        f"{args.heap:,} extra heap objects; median of {args.runs} runs each"
    )
    print(f"{'variant':<11} {'median s':>9} {'min s':>7} {'max s':>7} {'ms/test vs plain':>17}")
    for name, _, _ in variants:
        values = walls[name]
        median = statistics.median(values)
        extra = (median - plain) / args.tests * 1e3
        shown = "-" if name == "plain" else f"{extra:+.2f}"
        print(f"{name:<11} {median:>9.2f} {min(values):>7.2f} {max(values):>7.2f} {shown:>17}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

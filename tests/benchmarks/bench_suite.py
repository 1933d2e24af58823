"""What ``pytest --gpu-leak-check`` costs a passing suite, timed from outside.

    python tests/benchmarks/bench_suite.py [--tests 300] [--heap 0] [--device cpu]
        [--runs 3] [--fake]

Writes a suite of ``--tests`` passing tests that each allocate and free 1 MiB (on
the device: ``cuda`` when ``--device`` is ``cuda``/``auto`` and CUDA is available,
else ``cpu``), with a conftest that keeps ``--heap`` extra gc-tracked objects alive
for the whole session (a large application heap), and times WHOLE pytest runs, each
in a fresh process, in the same call, interleaved run by run:

- ``plain``: pytest without the check (the plugin is installed, not enabled);
- ``check``: ``pytest --gpu-leak-check``;
- ``gc fixture``: the obvious alternative, an autouse fixture that runs
  ``gc.collect()`` and ``empty_cache()`` and reads the allocator counter after
  every test;
- ``check fake`` (``--fake``): ``--gpu-leak-check --gpu-leak-device=fake``, the
  plugin and tracker over readings that cost nothing: the plugin's own share.

Two figures per variant, medians of ``--runs``: the wall time of the whole run
(start-up, imports, collection, reporting: nothing inside the process is trusted),
and the time from the end of collection to the end of the last test, taken by the
suite's own conftest (the same for every variant; it leaves out interpreter start,
the torch import and CUDA initialisation, whose spread between runs hides a
difference of a fraction of a millisecond per test).  Extra milliseconds per test
are ``(median - plain median) / tests``; the check's cost is also given as a ratio
to the fixture's.  The plugin's own in-process figure (its terminal summary line)
is shown beside.  The load average is printed: other work on the machine inflates
every variant alike, so read the ratios when it is high.  Not a test file; nothing
is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
import time

import pytest

# A large application heap, alive for the whole session.
_HEAP = [[i] for i in range({heap})]
_STARTED = []


def pytest_collection_finish(session):
    _STARTED.append(time.perf_counter())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    with open(os.environ["BENCH_TIMES"], "w") as out:
        out.write(str(time.perf_counter() - _STARTED[0]))


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

_OVERHEAD = re.compile(r"memdiag: overhead ([0-9.]+) ms per clean check")


@dataclass
class Variant:
    name: str
    args: list[str]
    env: dict[str, str]
    walls: list[float] = field(default_factory=list)
    tests_s: list[float] = field(default_factory=list)
    inproc_ms: list[float] = field(default_factory=list)


def run_pytest(workdir: Path, variant: Variant) -> None:
    """One whole pytest run of the suite in ``workdir``; records its three figures."""
    times = workdir / "times.txt"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *variant.args]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=workdir, env={**variant.env, "BENCH_TIMES": str(times)}, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"pytest {' '.join(variant.args)} exited with {proc.returncode}")
    variant.walls.append(wall)
    variant.tests_s.append(float(times.read_text()))
    found = _OVERHEAD.search(proc.stdout)
    if found:
        variant.inproc_ms.append(float(found.group(1)))


def write_suite(workdir: Path, *, device: str, tests: int, heap: int) -> None:
    (workdir / "test_suite.py").write_text(SUITE.format(device=device, tests=tests))
    (workdir / "conftest.py").write_text(CONFTEST.format(heap=heap))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=300, help="passing tests in the suite")
    parser.add_argument("--heap", type=int, default=0, help="extra gc objects kept alive")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant (median)")
    parser.add_argument("--fake", action="store_true", help="add the fake-device check")
    args = parser.parse_args(argv)

    import torch  # only to choose where the tests allocate

    cuda = args.device in ("cuda", "auto") and torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    check_device = "auto" if cuda else "cpu"
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_GC_FIXTURE", "PYTEST_ADDOPTS")}
    variants = [
        Variant("plain", [], env),
        Variant("check", ["--gpu-leak-check", f"--gpu-leak-device={check_device}"], env),
        Variant("gc fixture", [], {**env, "BENCH_GC_FIXTURE": "1"}),
    ]
    if args.fake:
        variants.append(Variant("check fake", ["--gpu-leak-check", "--gpu-leak-device=fake"], env))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_suite_") as tmp:
        work = Path(tmp)
        write_suite(work, device=device, tests=args.tests, heap=args.heap)
        run_pytest(work, Variant("warm-up", [], env))  # imports and bytecode caches
        for _ in range(args.runs):
            for variant in variants:
                run_pytest(work, variant)
    load_after = os.getloadavg()[0]

    print(
        f"{args.tests} passing tests, each allocating and freeing 1 MiB on {device}; "
        f"{args.heap:,} extra heap objects; median of {args.runs} runs each; "
        f"load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs"
    )
    plain = variants[0]
    header = ("variant", "wall s", "+ms/test", "tests s", "+ms/test", "in-process ms")
    print(f"{header[0]:<11} {header[1]:>8} {header[2]:>9} {header[3]:>8} {header[4]:>9} "
          f"{header[5]:>14}")  # fmt: skip
    extra: dict[str, float] = {}
    for variant in variants:
        wall, tests_s = statistics.median(variant.walls), statistics.median(variant.tests_s)
        wall_extra = (wall - statistics.median(plain.walls)) / args.tests * 1e3
        extra[variant.name] = (tests_s - statistics.median(plain.tests_s)) / args.tests * 1e3
        shown = (
            ("-", "-")
            if variant is plain
            else (f"{wall_extra:+.2f}", f"{extra[variant.name]:+.2f}")
        )
        inproc = f"{statistics.median(variant.inproc_ms):.2f}" if variant.inproc_ms else "-"
        print(f"{variant.name:<11} {wall:>8.2f} {shown[0]:>9} {tests_s:>8.2f} {shown[1]:>9} "
              f"{inproc:>14}")  # fmt: skip
    if extra["gc fixture"] > 0:
        print(
            f"check / gc fixture (tests, per test): {extra['check'] / extra['gc fixture']:.3f} "
            f"({extra['check']:+.2f} vs {extra['gc fixture']:+.2f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

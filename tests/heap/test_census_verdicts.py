"""Wrong verdicts: every storage-bearing tensor kind counts, a freed baseline tensor
cannot hide a new one, tensor subclasses' code never runs, and the numbers shown
are the ones the verdict used (gc.freeze() included)."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import memdiag
from memdiag.cli import main
from memdiag.heap.census import StorageLedger, take_census

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MiB = 1024 * 1024
KEPT: dict[str, Any] = {}


def _dense() -> torch.Tensor:
    return torch.ones(1024, 1024)  # 4 MiB


KINDS: dict[str, Callable[[], Any]] = {
    "sparse coo": lambda: torch.sparse_coo_tensor(
        torch.randint(0, 512, (2, 262144)), torch.ones(262144), (512, 512)
    ),
    "sparse csr": lambda: _dense().to_sparse_csr(),
    "sparse csc": lambda: _dense().to_sparse_csc(),
    "sparse bsr": lambda: _dense().to_sparse_bsr((2, 2)),
    "quantized": lambda: torch.quantize_per_tensor(_dense(), 0.1, 0, torch.qint8),
    "nested": lambda: torch.nested.nested_tensor([_dense(), _dense()]),
    "nested jagged": lambda: torch.nested.nested_tensor([_dense(), _dense()], layout=torch.jagged),
    "view": lambda: _dense()[1:],
    "subclass": lambda: _dense().as_subclass(torch.nn.Parameter),
}


@pytest.mark.parametrize("make", KINDS.values(), ids=list(KINDS))
def test_every_storage_bearing_tensor_kind_is_counted(make: Callable[[], Any]) -> None:
    with memdiag.track(device="cpu", settle=0, tolerance=memdiag.Tolerance(bytes=0)) as t:
        KEPT["x"] = make()
    try:
        assert t.result is not None
        assert t.result.leaked, t.result.summary()
        assert t.result.findings[0].nbytes >= MiB
    finally:
        KEPT.clear()


def test_freeing_a_baseline_tensor_does_not_hide_a_new_leak_of_the_same_size() -> None:
    KEPT["old"] = torch.ones(4 * MiB)  # 16 MiB that exists at baseline
    with memdiag.track(device="cpu", settle=0) as t:
        KEPT["old"] = None
        KEPT["new"] = torch.ones(4 * MiB)  # 16 MiB leaked
    KEPT.clear()
    assert t.result is not None and t.result.leaked, t.result.summary()
    assert t.result.findings[0].nbytes == 16 * MiB


class Blocking(torch.Tensor):
    """Blocks forever when any torch function is called on it."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        threading.Event().wait()


def test_a_blocking_torch_function_subclass_is_counted_without_running_its_code() -> None:
    done: list[bool] = []

    def check() -> None:
        with memdiag.track(device="cpu", settle=0) as t:
            KEPT["b"] = torch.ones(MiB).as_subclass(Blocking)
        done.append(bool(t.result and t.result.leaked))

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(60)
    KEPT.clear()
    assert done == [True]


class HostileMeta(type):
    def __eq__(cls, other: object) -> bool:
        raise AssertionError("memdiag called a metaclass __eq__")

    def __hash__(cls) -> int:
        raise AssertionError("memdiag called a metaclass __hash__")


def test_census_never_calls_user_eq_or_hash() -> None:
    ledger = StorageLedger()
    ledger.refresh()
    KEPT["odd"] = HostileMeta("Odd", (), {})()
    KEPT["t"] = torch.ones(MiB)
    census = take_census(ledger, ["cpu"])
    KEPT.clear()
    assert [r.nbytes for r in census.new] == [4 * MiB]


FROZEN = """
import gc, memdiag, torch
memdiag.phase("create")
class Engine: pass
e = Engine(); e.w = torch.ones(10 << 18); e.me = e
del e
gc.freeze()
memdiag.phase("shutdown")
"""


def test_numbers_shown_under_gc_freeze_are_the_ones_the_verdict_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "frozen.py"
    script.write_text(FROZEN)
    out = tmp_path / "r.json"
    try:
        code = main(["run", "--device", "cpu", "--settle", "0", "--json", str(out), str(script)])
    finally:
        gc.unfreeze()
    assert code == 1
    data = json.loads(out.read_text())
    leaked = sum(f["bytes"] for f in data["findings"] if f["is_leak"])
    assert leaked == 10 * MiB
    final = data["devices"][0]["final"]["allocated"]
    shutdown = data["phases"][-1]["readings"][0]["allocated"]
    assert final == shutdown == 10 * MiB
    assert "final check      10.0 MiB" in capsys.readouterr().err

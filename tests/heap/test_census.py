"""The live-tensor census with real CPU tensors."""

from __future__ import annotations

import gc

import torch

from memdiag.heap.census import StorageLedger, take_census


def test_views_and_aliases_count_the_storage_once() -> None:
    ledger = StorageLedger()
    ledger.refresh()
    base = torch.zeros(1024, 256)  # 1 MiB
    views = [base[i : i + 4] for i in range(10)]
    alias = base.view(-1)
    census = take_census(ledger, ["cpu"])
    mine = [r for r in census.new if r.key == base.untyped_storage()._cdata]
    assert len(mine) == 1
    assert mine[0].nbytes == 1024 * 256 * 4
    assert mine[0].tensor_count == 12
    del views, alias, base


def test_storages_alive_at_baseline_are_not_new() -> None:
    old = torch.ones(1000)
    ledger = StorageLedger()
    ledger.refresh()
    new = torch.ones(2000)
    census = take_census(ledger, ["cpu"])
    keys = {r.key for r in census.new}
    assert new.untyped_storage()._cdata in keys
    assert old.untyped_storage()._cdata not in keys
    assert census.baseline_bytes.get("cpu", 0) >= 4000


def test_a_reused_address_is_not_mistaken_for_the_baseline_storage() -> None:
    ledger = StorageLedger()
    old = torch.empty(4096)
    ledger.refresh()
    key = old.untyped_storage()._cdata
    del old
    gc.collect()
    # Whatever storage lives at the same C++ address now is a different object.
    fresh = [torch.empty(4096) for _ in range(50)]
    census = take_census(ledger, ["cpu"])
    assert all(
        r.key not in {key} or r.key in {t.untyped_storage()._cdata for t in fresh}
        for r in census.new
    )
    reused = [t for t in fresh if t.untyped_storage()._cdata == key]
    for t in reused:
        assert not ledger.knows(key, t.untyped_storage())


def test_frozen_tensors_are_found_and_the_freeze_state_is_kept() -> None:
    ledger = StorageLedger()
    ledger.refresh()

    class Holder:
        pass

    a, b = Holder(), Holder()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    a.tensor = torch.zeros(256, 1024)  # type: ignore[attr-defined]
    key = a.tensor.untyped_storage()._cdata  # type: ignore[attr-defined]
    gc.freeze()  # frozen while referenced: no collection can win the race
    del a, b
    try:
        frozen_count = gc.get_freeze_count()
        census = take_census(ledger, ["cpu"])
        assert gc.get_freeze_count() == frozen_count
        record = next(r for r in census.new if r.key == key)
        assert record.frozen
        assert census.frozen_bytes["cpu"] >= 1024 * 1024
    finally:
        gc.unfreeze()
        gc.collect()

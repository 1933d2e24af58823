"""The full-heap view: frozen objects seen, freeze state untouched, failures explained."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from memdiag.heap.view import HeapError, HeapView, call_with_full_heap


class Marker:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.cycle = self


@pytest.fixture
def frozen_marker() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()  # no automatic collection between creating the garbage and freezing it
    Marker("frozen-garbage")  # a self-cycle: garbage, but frozen before collection
    gc.freeze()
    if enabled:
        gc.enable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


def _tags(view: HeapView) -> list[tuple[str, bool]]:
    return [(o.tag, id(o) in view.frozen_ids) for o in view.objects if type(o) is Marker]


def test_without_frozen_objects_it_runs_in_process() -> None:
    keep = Marker("live")
    assert ("live", False) in call_with_full_heap(_tags)
    del keep


def test_frozen_garbage_is_seen_and_the_freeze_count_is_unchanged(frozen_marker: None) -> None:
    before = gc.get_freeze_count()
    assert ("frozen-garbage", True) in call_with_full_heap(_tags)
    assert gc.get_freeze_count() == before


def test_an_error_in_the_child_is_raised_with_its_traceback(frozen_marker: None) -> None:
    def boom(view: HeapView) -> None:
        raise ValueError("bad analysis")

    with pytest.raises(HeapError, match="ValueError: bad analysis"):
        call_with_full_heap(boom)


def test_a_child_that_takes_too_long_is_stopped(frozen_marker: None) -> None:
    import time

    def slow(view: HeapView) -> None:
        time.sleep(30)

    with pytest.raises(HeapError, match="took over 1 s"):
        call_with_full_heap(slow, timeout=1.0)

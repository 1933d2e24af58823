"""Each root kind is found and named, on real leaks of real CPU tensors.

Leaks are built in helper functions that return only the targets, so no test frame
holds a leaked object while the analysis runs (it would be a root of its own).
"""

from __future__ import annotations

import functools
import gc
import threading
import weakref
from typing import Any, ClassVar

import pytest
import torch

from memdiag.heap.view import freeze_count
from memdiag.retainers import RetainerGroup, RetainerReport, analyze
from tests.retainers.leaks import targets_of


def only_group(report: RetainerReport) -> RetainerGroup:
    assert len(report.groups) == 1, report.text()
    return report.groups[0]


class Engine:
    def __init__(self, size: int) -> None:
        self.model = torch.nn.Sequential(torch.nn.Linear(size, size, bias=False))


def test_module_global_is_named_with_attribute_path(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        leak_module.ENGINE = Engine(64)
        return targets_of(leak_module.ENGINE.model.parameters())

    group = only_group(analyze(leak()))

    assert group.root_kind == "module"
    assert group.root_name == f"{leak_module.__name__}.ENGINE"
    assert (
        group.chain_text() == f"{leak_module.__name__}.ENGINE -> .model[0].weight (cpu, 16.0 KiB)"
    )
    assert group.retained_bytes == 64 * 64 * 4
    assert group.suspect_index == 0  # the Engine instance itself should have died


class Registry:
    cache: ClassVar[dict[str, Any]] = {}


def test_class_attribute_is_named_module_class_attr() -> None:
    def leak() -> dict[int, int]:
        Registry.cache["kv"] = torch.zeros(256)
        return targets_of([Registry.cache["kv"]])

    try:
        group = only_group(analyze(leak()))
    finally:
        Registry.cache.clear()

    assert group.root_kind == "class"
    assert group.root_name.endswith("test_retainer_roots.Registry.cache")
    assert group.chain_text().endswith(".Registry.cache -> ['kv'] (cpu, 1.0 KiB)")


class Model(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(layers))

    def forward(self, x: Any) -> Any:
        return x


@functools.lru_cache
def supports_kw(fn: Any, kw: str) -> bool:
    return kw == "x"


def test_lru_cache_keyed_by_bound_method_is_one_finding_of_512_tensors() -> None:
    def leak() -> dict[int, int]:
        model = Model(256)  # 512 parameters
        supports_kw(model.forward, "x")
        return targets_of(model.parameters())

    try:
        targets = leak()
        report = analyze(targets)
    finally:
        supports_kw.cache_clear()

    group = only_group(report)
    assert group.root_kind == "lru_cache"
    assert group.root_name.endswith("test_retainer_roots.supports_kw")
    assert group.root_name.startswith("lru_cache of ")
    assert group.tensor_count == 512
    assert group.storage_count == 512
    assert group.retained_bytes == sum(targets.values())
    assert " -> cache key -> bound method Model.forward -> Model -> .layers[" in group.chain_text()
    assert group.suspect_text() == "cache key -> bound method Model.forward"
    assert group.chain[group.suspect_index or 0].node == "bound method Model.forward"
    assert group.retainer_text().endswith("-> Model -> .layers")
    assert not report.unrooted


@functools.cache
def load_weights(name: str) -> list[Any]:
    return [torch.ones(128)]


@functools.lru_cache(maxsize=4)
def load_bounded(name: str) -> tuple[Any, ...]:
    return (torch.ones(64),)


@pytest.mark.parametrize("cached", [load_weights, load_bounded], ids=["unbounded", "bounded"])
def test_lru_cache_value_is_called_cached_value(cached: Any) -> None:
    try:
        group = only_group(analyze(targets_of(cached("w"))))
    finally:
        cached.cache_clear()
    assert group.root_kind == "lru_cache"
    assert " -> cached value -> [0] (cpu, " in group.chain_text(), group.chain_text()


def test_closure_cell_names_variable_and_function(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        def make() -> Any:
            weights = torch.zeros(32)

            def forward() -> Any:
                return weights

            return forward

        leak_module.CALLBACK = make()
        return targets_of([leak_module.CALLBACK()])

    group = only_group(analyze(leak()))
    assert group.chain_text() == (
        f"{leak_module.__name__}.CALLBACK -> <cell 'weights' of "
        "test_closure_cell_names_variable_and_function.<locals>.leak.<locals>.make.<locals>"
        ".forward> (cpu, 128 B)"
    )


def _hold(tensor_box: list[Any], ready: threading.Event, stop: threading.Event) -> None:
    held = tensor_box.pop()
    ready.set()
    stop.wait(10)
    del held


def test_live_thread_local_is_named_by_thread_function_and_variable() -> None:
    box = [torch.zeros(1024)]
    targets = targets_of(box)
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hold, args=(box, ready, stop), name="holder-thread")
    thread.start()
    try:
        assert ready.wait(5)
        group = only_group(analyze(targets))
    finally:
        stop.set()
        thread.join(5)

    assert group.root_kind == "thread"
    assert group.root_name.startswith("thread 'holder-thread' in _hold (test_retainer_roots.py:")
    assert group.chain_text().endswith("-> local 'held' (cpu, 4.0 KiB)")


def test_caller_frame_is_a_root_and_is_left_without_extra_references() -> None:
    leaked = torch.zeros(10)
    ref = weakref.ref(leaked)
    report = analyze(targets_of([leaked]))
    group = only_group(report)
    assert group.root_kind == "thread"
    assert group.root_name.startswith(
        f"thread '{threading.current_thread().name}' in "
        "test_caller_frame_is_a_root_and_is_left_without_extra_references"
    )
    assert group.chain_text().endswith("-> local 'leaked' (cpu, 40 B)")
    del leaked
    gc.collect()
    assert ref() is None  # reading the frame's locals kept no reference


def _fail(targets: dict[int, int], elements: int) -> None:
    doomed = torch.zeros(elements)
    targets.update(targets_of([doomed]))
    raise ValueError(f"failed with {doomed.numel()} elements")


def test_stored_traceback_names_frame_and_local(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        targets: dict[int, int] = {}
        try:
            _fail(targets, 64)
        except ValueError as exc:
            leak_module.LAST_ERROR = exc
        return targets

    group = only_group(analyze(leak()))
    text = group.chain_text()
    assert text.startswith(f"{leak_module.__name__}.LAST_ERROR -> .__traceback__.tb_next -> ")
    assert "frame _fail (test_retainer_roots.py:" in text
    assert text.endswith("-> local 'doomed' (cpu, 256 B)")


def test_current_exception_is_a_root() -> None:
    targets: dict[int, int] = {}
    try:
        _fail(targets, 16)
    except ValueError:
        report = analyze(targets)
    group = only_group(report)
    assert group.root_kind == "exception"
    assert group.root_name == "current exception ValueError"
    assert "local 'doomed'" in group.chain_text()


class Node:
    def __init__(self) -> None:
        self.partner: Node | None = None
        self.tensor: Any = None


def _cycle(nbytes: int) -> dict[int, int]:
    a, b = Node(), Node()
    a.partner, b.partner = b, a
    b.tensor = torch.zeros(nbytes // 4)
    return targets_of([b.tensor])


def test_gc_frozen_cycle_is_named_and_freeze_state_is_kept() -> None:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        targets = _cycle(4096)
        gc.freeze()
        before = freeze_count()
        assert before > 0
        report = analyze(targets)
        # Nothing unfrozen, nothing newly frozen.  A frozen object may still die by
        # reference count meanwhile (a cache of an earlier test replaced): a few, not all.
        assert before - 16 <= freeze_count() <= before
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
        gc.collect()

    group = only_group(report)
    assert group.root_kind == "frozen"
    assert group.frozen
    assert group.root_name == "gc.freeze()"
    assert "kept by gc.freeze(): " in group.note
    assert "would be collected after gc.unfreeze()" in group.note
    assert group.chain_text().startswith("gc.freeze() -> Node -> ")
    assert group.retained_bytes == 4096


def test_unreachable_cycle_is_unrooted_not_dropped() -> None:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        targets = _cycle(1024)
        report = analyze(targets)
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()
    assert not report.groups
    [group] = report.unrooted
    assert group.root_kind == "unreachable"
    assert group.retained_bytes == 1024
    assert "gc.collect() would free it" in group.note


def test_tensor_held_only_by_autograd_is_charged_to_the_graph_root(
    leak_module: Any,
) -> None:
    def leak() -> dict[int, int]:
        x = torch.ones(256, requires_grad=True)
        y = x.exp()  # exp saves its result for backward
        leak_module.LOSS = y.sum()
        return targets_of([y])

    report = analyze(leak())
    [group] = report.groups
    assert group.root_name == f"{leak_module.__name__}.LOSS"
    assert group.retained_bytes == 1024
    assert group.chain_text().endswith("ExpBackward0 -> ._saved_result (cpu, 1.0 KiB)"), (
        group.chain_text()
    )

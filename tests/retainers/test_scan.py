"""The referrer search (memdiag.retainers.scan) on hand-made heaps: one pass when every
reference is accounted for, sweeps when one is not, and every referrer found."""

from __future__ import annotations

import ctypes
from typing import Any

from memdiag.retainers.scan import Subgraph, scan_heap

_CHUNK = 256


class Holder:
    """Stands in for a tensor: its storage key is ``key``."""

    def __init__(self, key: int) -> None:
        self.key = key


def _key_of(obj: object) -> int | None:
    return obj.key if type(obj) is Holder else None


def _search(objects: list[object], roots: list[object], holders: list[object]) -> Subgraph:
    root_ids = {id(r) for r in roots}
    return scan_heap(
        objects,
        targets={7},
        holders=holders,
        key_of=_key_of,
        root_of=lambda obj: "module" if id(obj) in root_ids else None,
        exclude=set(),
    )


def _filler(count: int) -> list[object]:
    return [[index] for index in range(count)]


def _heap(order: str) -> tuple[list[object], list[object], list[object]]:
    """A root dict -> a list -> a holder; ``order`` says which chunk each one is in.

    The test keeps no name bound to the list: its only references are the root's
    and the listing's, as in a program's heap."""
    holder = Holder(7)
    root: dict[str, Any] = {"held": [holder]}
    middle = root["held"]
    if order == "root first":  # root in chunk 0, list and holder in chunk 1
        objects = [root, *_filler(_CHUNK), middle, holder]
    else:  # list in chunk 0, root in chunk 1: the backwards pass meets the root first
        objects = [middle, holder, *_filler(_CHUNK), root]
    del middle
    return objects, [root], [holder]


def test_a_heap_whose_references_are_all_found_takes_one_pass() -> None:
    objects, roots, holders = _heap("root first")
    graph = _search(objects, roots, holders)
    assert graph.rounds == 1 and graph.complete
    (root,) = roots
    assert graph.roots[id(root)][0] == "module"
    assert id(root["held"]) in graph.nodes


def test_a_referrer_passed_before_its_referent_was_found_is_found_by_a_sweep() -> None:
    objects, roots, holders = _heap("root last")
    graph = _search(objects, roots, holders)
    (root,) = roots
    assert id(root) in graph.roots, "the root passed first is found by the sweep"
    assert graph.rounds == 2
    assert graph.children[id(root)] == {id(root["held"])}


def test_a_reference_held_from_c_is_never_taken_as_accounted_for() -> None:
    objects, roots, holders = _heap("root first")
    (root,) = roots
    middle = root["held"]
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(middle))  # a reference gc cannot see
    del middle
    try:
        graph = _search(objects, roots, holders)
    finally:
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(root["held"]))
    assert graph.rounds == 2, "an unexplained reference is searched for"
    assert id(root) in graph.roots


def test_a_chain_built_against_the_pass_direction_is_found_whole() -> None:
    # Each link is created after the one it holds and listed after it: the backwards
    # pass meets every referrer before its referent.
    holder = Holder(7)
    node: list[Any] = [holder]
    chain = [node]
    for _ in range(3 * _CHUNK):
        node = [node]
        chain.append(node)
    root = {"top": node}
    objects: list[object] = [holder, *chain, root]
    del node, chain
    graph = _search(objects, [root], [holder])
    assert graph.complete
    assert len(graph.nodes) == 3 * _CHUNK + 2  # the links and the holder
    assert id(root) in graph.roots

"""From one path per tensor to a few findings with true sizes.

Tensors whose paths start at the same named root and cross into short-lived objects
through the same *shape* (edge labels with keys and indices abstracted, and the
types along the way) form one finding: a 512-parameter model held by one cache is
one finding, so are a thousand requests kept in one registry, while two different
roots, or two different ways into the leaked objects, stay apart.

This is shared-prefix grouping over the preferred-root shortest-path forest.  We
chose it over graph dominators because a finding must name the root to fix, and the
dominator of objects reached from several roots is none of them; the other roots
that also reach a group are listed in ``other_roots`` instead (cutting one root will
not free the memory).  ``common_length`` says how far the group's paths run together.

Bytes are the storages' ``nbytes`` from the targets, each storage counted once, in
the first group (by root preference) that holds it; views and aliases add tensors,
not bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence

from memdiag.heap.view import HeapView
from memdiag.retainers.describe import qualname, type_name
from memdiag.retainers.known import IgnoreRule, KnownRetention, match_ignore, match_known
from memdiag.retainers.model import RetainerReport
from memdiag.retainers.outside import logger_root, outside_note
from memdiag.retainers.paths import PSEUDO_KINDS, PathForest
from memdiag.values.retainers import Edge, RetainerGroup
from memdiag.values.units import format_bytes, plural

__all__ = ["assemble", "no_tensor_group", "signature"]

_FROZEN_NOTE = (
    "kept by gc.freeze(): {n} objects frozen; this cycle is unreachable and would be "
    "collected after gc.unfreeze()"
)
_UNREACHABLE_NOTE = (
    "no root reaches this reference cycle: gc.collect() would free it unless native code "
    "refers into it (a C extension, a hook registered from C); the check runs "
    "gc.collect() first, so a cycle still seen by a check is held that way"
)
_OUTSIDE_NOTE = (
    "nothing in the Python heap refers to the first object of this chain, yet it is "
    "alive: native code holds it (a C extension, a hook or a thread registered from C); "
    "gc.collect() does not free it"
)
_NATIVE_NOTE = (
    "no Python object refers to these tensors: they are held from native code (a C++ "
    "extension, the autograd graph, a CUDA graph pool) or by an executing frame's "
    "value stack"
)
_NO_TENSOR_NOTE = (
    "no Python tensor or storage object refers to these storages: only native code "
    "(C++ tensors, autograd saved tensors, allocator pools) holds them"
)


def signature(parts: Iterable[str]) -> str:
    """A short stable hash of a chain's shape."""
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:12]


def _shown_length(where: Mapping[int, int], common: int, shown: int) -> int:
    """``common`` path nodes as a length of the shown (possibly elided) chain."""
    if common <= 0:
        return 0
    inside = [index for position, index in where.items() if position < common]
    last = max(inside, default=-1)
    if common - 1 not in where and last + 1 < shown:
        last += 1  # the shared part ends inside an elided gap: include the gap
    return last + 1


def _rooted_groups(
    forest: PathForest, frozen_ids: frozenset[int], alloc_sites: Mapping[int, str]
) -> list[RetainerGroup]:
    graph = forest.graph
    targets = forest.targets
    buckets: dict[tuple[str, str, int], list[int]] = {}
    claimed = sorted((h for h in graph.holders if h in forest.claim), key=forest.order.__getitem__)
    for holder in claimed:
        seed = forest.seeds[forest.claim[holder]]
        buckets.setdefault((seed.kind, seed.name, forest.shape[holder]), []).append(holder)
    credited: set[int] = set()
    out: list[RetainerGroup] = []
    # Buckets come in visiting order, hence root preference: credit storages first-come.
    for (kind, name, shape), holders in buckets.items():
        keys = {graph.holders[h] for h in holders}
        mine = keys - credited
        credited |= mine
        example = max(holders, key=lambda h: (targets.get(graph.holders[h], 0), -forest.order[h]))
        storage = targets.get(graph.holders[example], 0)
        chain, nodes, where = forest.chain(example)
        common = forest.common_length(holders)
        suspect = forest.suspect.get(example)
        suspect_at = forest.depth.get(suspect) if suspect is not None else None
        suspect_index = (
            where.get(suspect_at)
            if suspect_at is not None and suspect_at < len(nodes) and nodes[suspect_at] == suspect
            else None
        )
        seed = forest.seeds[forest.claim[example]]
        note = ""
        if kind == "frozen":
            note = _FROZEN_NOTE.format(n=len(frozen_ids))
        elif kind == "unreachable":
            note = _UNREACHABLE_NOTE
        elif kind == "native":
            note = _OUTSIDE_NOTE
        else:
            note = outside_note(name) if kind == "registry" else ""
        focus = suspect if suspect is not None else nodes[max(common - 1, 0)]
        others = () if kind in PSEUDO_KINDS else forest.other_roots(focus, name)
        shown_common = _shown_length(where, common, len(chain))
        signature_name = seed.signature_name
        registry = logger_root(chain)
        if registry is not None:  # logging's registry keeps the logger, whoever named it
            cut, name = registry
            kind, others, chain, signature_name = "registry", (), chain[cut + 1 :], name
            note = note or outside_note(name)
            suspect_index = None if suspect_index is None else suspect_index - cut - 1
            if suspect_index is not None and suspect_index < 0:
                suspect_index = None
            shown_common = max(shown_common - cut - 1, 0)
        out.append(
            RetainerGroup(
                root_kind=kind,
                root_name=name,
                chain=chain,
                suspect_index=suspect_index,
                retained_bytes=sum(targets.get(k, 0) for k in mine),
                tensor_count=len(holders),
                storage_count=len(mine),
                signature=signature(
                    (
                        kind,
                        signature_name,
                        *forest.shape_parts(shape),
                        type_name(type(graph.nodes[example])),
                    )
                ),
                frozen=any(n in frozen_ids for n in nodes),
                example_tensor=forest.info(example).text(storage),
                storage_keys=tuple(sorted(keys)),
                common_length=shown_common,
                note=note,
                alloc_site=alloc_sites.get(graph.holders[example]),
                other_roots=others,
            )
        )
    return out


def _native_groups(
    forest: PathForest,
    native: list[int],
    targets: Mapping[int, int],
    alloc_sites: Mapping[int, str],
) -> list[RetainerGroup]:
    graph = forest.graph
    out: list[RetainerGroup] = []
    held = set(graph.holders.values())
    if native:
        keys = {graph.holders[h] for h in native}
        example = max(
            native, key=lambda h: (targets.get(graph.holders[h], 0), qualname(type(graph.nodes[h])))
        )
        storage = targets.get(graph.holders[example], 0)
        edge = Edge("", type_name(type(graph.nodes[example])), forest.info(example).short(storage))
        out.append(
            RetainerGroup(
                root_kind="native",
                root_name="native code",
                chain=(edge,),
                suspect_index=0,
                retained_bytes=0,  # filled by the caller once storages are credited
                tensor_count=len(native),
                storage_count=len(keys),
                signature=signature(("native", edge.type_name)),
                example_tensor=forest.info(example).text(storage),
                storage_keys=tuple(sorted(keys)),
                note=_NATIVE_NOTE,
                alloc_site=alloc_sites.get(graph.holders[example]),
            )
        )
    orphans = sorted(k for k in targets if k not in held)
    if orphans:
        largest = max(orphans, key=lambda k: targets[k])
        out.append(
            no_tensor_group(
                orphans,
                sum(targets[k] for k in orphans),
                example_tensor=f"storage of {format_bytes(targets[largest])} with no Python tensor",
                alloc_site=alloc_sites.get(largest),
            )
        )
    return out


def no_tensor_group(
    storage_keys: Sequence[int],
    total: int,
    *,
    example_tensor: str,
    note: str = _NO_TENSOR_NOTE,
    alloc_site: str | None = None,
) -> RetainerGroup:
    """The group of storages no Python tensor or storage object refers to: held by
    native code only.  ``total``: their bytes; ``storage_keys`` in the order to keep."""
    return RetainerGroup(
        root_kind="native",
        root_name="native code (no Python tensor)",
        chain=(),
        suspect_index=None,
        retained_bytes=total,
        tensor_count=0,
        storage_count=len(storage_keys),
        signature=signature(("native", "no-tensor")),
        example_tensor=example_tensor,
        storage_keys=tuple(storage_keys),
        note=note,
        alloc_site=alloc_site,
    )


def assemble(
    forest: PathForest,
    native: list[int],
    *,
    view: HeapView,
    max_groups: int,
    keep_over: int | None = None,
    ignore: Sequence[IgnoreRule],
    known: Sequence[KnownRetention],
    alloc_sites: Mapping[int, str],
    start: float,
    notes: list[str],
) -> RetainerReport:
    """Group, credit, classify (known, ignored) and order the findings."""
    targets = forest.targets
    groups = _rooted_groups(forest, view.frozen_ids, alloc_sites)
    credited = {k for g in groups for k in g.storage_keys}
    extra = _native_groups(forest, native, targets, alloc_sites)
    fixed: list[RetainerGroup] = []
    for group in extra:
        if group.root_name == "native code":
            mine = [k for k in group.storage_keys if k not in credited]
            if not mine:
                continue  # every storage is credited to a root: nothing native left to show
            group = dataclasses.replace(
                group, retained_bytes=sum(targets[k] for k in mine), storage_count=len(mine)
            )
        fixed.append(group)
    groups = _fold_empty(groups)
    rooted: list[RetainerGroup] = []
    unrooted: list[RetainerGroup] = [g for g in groups if g.root_kind == "unreachable"] + fixed
    ignored: list[RetainerGroup] = []
    for group in groups:
        if group.root_kind == "unreachable":
            continue
        entry = match_known(known, group.root_name, group.chain_text())
        if entry is not None:
            group = dataclasses.replace(group, known=entry.name, note=entry.explanation)
        rooted.append(group)
    kept: list[RetainerGroup] = []
    for group in rooted + unrooted:
        rule = match_ignore(ignore, group.root_name, group.signature)
        if rule is not None:
            ignored.append(dataclasses.replace(group, note=rule.reason or group.note))
        else:
            kept.append(group)

    def size_order(g: RetainerGroup) -> tuple[int, int, str]:
        return (-g.retained_bytes, -g.tensor_count, g.root_name)

    rooted_kept = sorted(
        (g for g in kept if g.root_kind not in ("unreachable", "native")), key=size_order
    )
    unrooted_kept = sorted(
        (g for g in kept if g.root_kind in ("unreachable", "native")), key=size_order
    )
    if len(rooted_kept) > max_groups:
        # Every group holding more than the tolerance is kept: the cap only drops
        # groups that alone would not fail a check.
        beyond = rooted_kept[max_groups:]
        over = [g for g in beyond if keep_over is not None and g.retained_bytes > keep_over]
        rest = [g for g in beyond if not (keep_over is not None and g.retained_bytes > keep_over)]
        rooted_kept = rooted_kept[:max_groups] + over
        if rest:
            if keep_over is not None:
                each = f", each holding at most the tolerance ({format_bytes(keep_over)}),"
                listed = f"the {max_groups} biggest and every one over the tolerance"
            else:
                each, listed = "", f"the {max_groups} biggest"
            notes.append(
                f"{plural(len(rest), 'more group')}{each} retain "
                f"{format_bytes(sum(g.retained_bytes for g in rest))} in "
                f"{plural(sum(g.tensor_count for g in rest), 'tensor')}; not listed "
                f"(the analysis lists {listed})"
            )
    if view.frozen_ids and any(g.root_kind == "frozen" for g in rooted_kept):
        notes.append(_FROZEN_NOTE.format(n=len(view.frozen_ids)))
    return RetainerReport(
        groups=tuple(rooted_kept),
        unrooted=tuple(unrooted_kept),
        ignored=tuple(sorted(ignored, key=size_order)),
        heap_objects=len(view.objects),
        elapsed_s=time.perf_counter() - start,
        notes=tuple(notes),
        target_storages=len(targets),
        target_bytes=sum(targets.values()),
    )


def _fold_empty(groups: list[RetainerGroup]) -> list[RetainerGroup]:
    """Groups whose every storage was credited to an earlier group (a second root
    holding views of the first one's storage; an unreachable cycle, native code or
    gc.freeze() keeping a view) hold no bytes of their own: instead of an empty "0 B"
    group, their root joins that group's other roots (cutting the named root alone
    frees nothing)."""
    owner: dict[int, int] = {}
    for index, group in enumerate(groups):
        if group.storage_count:
            for key in group.storage_keys:
                owner.setdefault(key, index)
    extra_roots: dict[int, list[str]] = {}
    kept: list[int] = []
    for index, group in enumerate(groups):
        if group.storage_count or not group.storage_keys:
            kept.append(index)
            continue
        target = owner.get(group.storage_keys[0])
        if target is None:
            kept.append(index)
        else:  # a view of the same storage: cutting the other root alone frees nothing
            extra_roots.setdefault(target, []).append(group.root_name)
    out = []
    for index in kept:
        group = groups[index]
        more = [r for r in extra_roots.get(index, ()) if r not in group.other_roots]
        if more:
            group = dataclasses.replace(
                group, other_roots=(*group.other_roots, *dict.fromkeys(more))
            )
        out.append(group)
    return out

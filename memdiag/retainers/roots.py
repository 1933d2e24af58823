"""Named roots: what they are, how to recognise them, and what to call them.

In order of preference (:data:`~memdiag.retainers.model.ROOT_KINDS`): module globals
(``pkg.mod.NAME``, ``__main__`` included), class attributes (``mod.Class.attr``),
``functools.lru_cache``/``cache`` wrappers (``lru_cache of mod.fn``), stacks of live
threads (``thread 'name' in fn (file.py:12)``), the exception being handled,
registries (module state such as ``atexit``'s callbacks, module globals named like
hook lists or registries).  The gc-frozen generation, unreachable cycles and native
holders are not roots; the analysis names them when nothing else reaches a tensor.
"""

from __future__ import annotations

import functools
import gc
import inspect
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from memdiag.retainers.describe import (
    dict_items,
    frame_locals,
    frame_text,
    func_name,
    instance_dict,
    is_a,
    key_text,
    type_name,
)
from memdiag.values.retainers import ROOT_KINDS

__all__ = ["RootEnv", "Seed", "ThreadStack", "capture_threads", "own_frame_ids"]

_REGISTRY_PATTERNS = ("*hook*", "*callback*", "*registry*", "*handlers*", "*listeners*")
_HERE = os.path.dirname(os.path.abspath(__file__))
_HEAP_FILE = os.path.join(os.path.dirname(_HERE), "heap.py")


@dataclass(frozen=True)
class ThreadStack:
    """The frames of one thread, innermost first, captured before the heap walk."""

    name: str
    ident: int
    frames: tuple[types.FrameType, ...]


@dataclass(frozen=True)
class Seed:
    """A named reference from a root to the first object of a chain."""

    rank: int
    kind: str
    name: str
    signature_name: str
    label: str
    role: str
    root_id: int
    child_id: int
    owner: object


_PACKAGE = os.path.dirname(_HERE)


def _is_own(frame: types.FrameType) -> bool:
    """A frame of memdiag's own code (the runner holding the finished program's
    module, the check, this analysis): bookkeeping, never a holder to name."""
    filename = os.path.abspath(frame.f_code.co_filename)
    return filename.startswith(_PACKAGE + os.sep) or filename == _HEAP_FILE


def own_frame_ids() -> set[int]:
    """Ids of this analysis' frames on the current stack (never roots or parents)."""
    ids: set[int] = set()
    frame: types.FrameType | None = sys._getframe(1)
    try:
        while frame is not None:
            if _is_own(frame):
                ids.add(id(frame))
            frame = frame.f_back
    finally:
        del frame
    return ids


def capture_threads() -> tuple[ThreadStack, ...]:
    """Every thread's stack, minus this analysis' own frames."""
    names: dict[int, str] = {}
    for thread in threading.enumerate():
        try:
            ident = thread.ident
            name = thread.name
        except Exception:  # noqa: BLE001 - an odd Thread subclass
            continue
        if ident is not None and type(name) is str:
            names[ident] = name
    stacks = []
    current = sys._current_frames()
    frame: types.FrameType | None = None
    try:
        for ident in list(current):
            frames = []
            frame = current[ident]
            while frame is not None:
                if not _is_own(frame):
                    frames.append(frame)
                frame = frame.f_back
            if frames:
                name = names.get(ident, f"thread {ident}")
                stacks.append(ThreadStack(name, ident, tuple(frames)))
    finally:
        # This frame is among ``current``: drop the references that would make it,
        # and every frame it reaches, a cycle outliving the call.
        current.clear()
        del current, frame
    return tuple(stacks)


def _frame_referents(frame: types.FrameType) -> Callable[[], Iterable[object]]:
    def referents() -> Iterable[object]:
        values = [value for _, value in frame_locals(frame)]
        trace = frame.f_trace
        return values + ([trace] if trace is not None else [])

    return referents


class RootEnv:
    """What counts as a root in this heap, and how to name it."""

    def __init__(
        self,
        threads: Iterable[ThreadStack],
        exception: BaseException | None,
        frozen_ids: frozenset[int],
    ) -> None:
        self.module_dicts: dict[int, str] = {}
        for name, module in list(sys.modules.items()):
            if is_a(module, types.ModuleType) and type(name) is str:
                namespace = instance_dict(module)
                if namespace is not None:
                    self.module_dicts.setdefault(id(namespace), name)
        self.frames: dict[int, tuple[str, types.FrameType]] = {}
        for stack in threads:
            for frame in stack.frames:
                self.frames[id(frame)] = (stack.name, frame)
        self.exception = exception
        self.frozen_ids = frozen_ids
        self.lru_type: type = functools._lru_cache_wrapper
        self._dict_index: dict[int, dict[int, str]] = {}
        self._children: dict[int, set[int]] = {}
        self._nodes: dict[int, object] = {}
        self._roots: dict[int, tuple[str, object]] = {}

    @property
    def extra(self) -> list[tuple[object, Callable[[], Iterable[object]]]]:
        """Roots whose referents ``gc`` does not show: executing frames, the exception."""
        found: list[tuple[object, Callable[[], Iterable[object]]]] = [
            (frame, _frame_referents(frame)) for _, frame in self.frames.values()
        ]
        if self.exception is not None:
            exc = self.exception
            found.append((exc, lambda: gc.get_referents(exc)))
        return found

    def held_references(self, obj: object) -> list[object] | None:
        """For an executing frame, the references it holds that ``gc.get_referents``
        does not show, each once: its plain local variables (a cell variable's value is
        held by the cell, and a module frame's by its namespace) and its trace
        function.  ``None`` for every other object: ``gc.get_referents`` shows them."""
        found = self.frames.get(id(obj))
        if found is None:
            return None
        frame = found[1]
        trace = frame.f_trace
        held: list[object] = [trace] if trace is not None else []
        code = frame.f_code
        if not code.co_flags & inspect.CO_OPTIMIZED:
            return held
        cells = set(code.co_cellvars) | set(code.co_freevars)
        held += [value for key, value in frame_locals(frame) if key not in cells]
        return held

    def classify(self, obj: object) -> str | None:
        """The root kind of ``obj``, or ``None`` for an ordinary object."""
        oid = id(obj)
        if oid in self.module_dicts:
            return "module"
        if oid in self.frames:
            return "thread"
        tp = type(obj)
        if issubclass(tp, type):
            return "class"
        if tp is self.lru_type:
            return "lru_cache"
        if issubclass(tp, types.ModuleType):
            return "registry"
        if self.exception is not None and obj is self.exception:
            return "exception"
        return None

    # -- naming ----------------------------------------------------------------
    def _key_of(self, namespace: object, child_id: int) -> str | None:
        index = self._dict_index.get(id(namespace))
        if index is None:
            index = {}
            for key, value in dict_items(namespace):
                if type(key) is str:
                    index.setdefault(id(value), key)
            self._dict_index[id(namespace)] = index
        return index.get(child_id)

    def seeds(
        self, kind: str, root: object, children: Iterable[int], nodes: dict[int, object]
    ) -> list[Seed]:
        """The named references from one root into the searched region."""
        out: list[Seed] = []
        rid = id(root)

        def add(kind_: str, name: str, label: str, role: str, child: int, owner: object) -> None:
            signature_name = name
            if kind_ == "module" and any(fnmatchcase(name.lower(), p) for p in _REGISTRY_PATTERNS):
                kind_ = "registry"
                signature_name = name
            out.append(
                Seed(
                    ROOT_KINDS.index(kind_),
                    kind_,
                    name,
                    signature_name,
                    label,
                    role,
                    rid,
                    child,
                    owner,
                )
            )

        if kind == "module":
            module = self.module_dicts[rid]
            for child in children:
                key = self._key_of(root, child)
                add(
                    "module",
                    f"{module}.{key}" if key else f"{module} (namespace)",
                    "",
                    "plain",
                    child,
                    root,
                )
        elif kind == "class" and isinstance(root, type):
            cls = root
            proxied = gc.get_referents(type.__dict__["__dict__"].__get__(cls))
            for child in children:
                if any(n is nodes.get(child) for n in proxied):
                    for grandchild in self._children_of(child):
                        key = self._key_of(nodes[child], grandchild)
                        add("class", f"{type_name(cls)}.{key}", "", "plain", grandchild, cls)
                else:
                    add("class", f"{type_name(cls)} (class internals)", "", "plain", child, cls)
        elif kind == "lru_cache":
            out.extend(self._lru_seeds(root, children, nodes))
        elif kind == "thread":
            thread, frame = self.frames[rid]
            where = frame_text(frame).removeprefix("frame ")
            code = frame.f_code
            qual = getattr(code, "co_qualname", code.co_name)
            for child in children:
                out.append(
                    Seed(
                        ROOT_KINDS.index("thread"),
                        "thread",
                        f"thread '{thread}' in {where}",
                        f"thread in {qual} ({os.path.basename(code.co_filename)})",
                        self._local_label(frame, child),
                        "plain",
                        rid,
                        child,
                        None,
                    )
                )
        elif kind == "exception":
            for child in children:
                add(
                    "exception",
                    f"current exception {type_name(type(root))}",
                    "",
                    "plain",
                    child,
                    None,
                )
        elif kind == "registry":
            namespace = instance_dict(root)
            found = namespace.get("__name__") if namespace else None
            modname = found if type(found) is str else "?"
            for child in children:
                if nodes.get(child) is namespace and namespace is not None:
                    for grandchild in self._children_of(child):
                        key = self._key_of(namespace, grandchild)
                        add("module", f"{modname}.{key}", "", "plain", grandchild, namespace)
                else:
                    add("registry", f"{modname} module state", "(registered)", "plain", child, root)
        return out

    def bind(
        self,
        children: dict[int, set[int]],
        nodes: dict[int, object],
        roots: dict[int, tuple[str, object]],
    ) -> None:
        """Give the searched region, so namespaces found as nodes can be expanded."""
        self._children = children
        self._nodes = nodes
        self._roots = roots

    def all_seeds(self) -> list[Seed]:
        """Every root's seeds, most preferred first, in a run-independent order."""
        seeds: list[Seed] = []
        for rid, (kind, obj) in self._roots.items():
            seeds.extend(self.seeds(kind, obj, self._children_of(rid), self._nodes))
        seeds.sort(key=lambda s: (s.rank, s.name))
        return seeds

    def _children_of(self, node: int) -> list[int]:
        """Children in the order the object holds them (stable across runs)."""
        wanted = self._children.get(node, set())
        obj = self._nodes.get(node)
        if obj is None and node in self._roots:
            obj = self._roots[node][1]
        if obj is None or not wanted:
            return []
        ordered: list[int] = []
        if node in self.frames:
            refs: Iterable[object] = _frame_referents(self.frames[node][1])()
        else:
            refs = gc.get_referents(obj)
        for ref in refs:
            rid = id(ref)
            if rid in wanted and rid not in ordered:
                ordered.append(rid)
        return ordered

    def _local_label(self, frame: types.FrameType, child: int) -> str:
        for key, value in frame_locals(frame):
            if id(value) == child:
                return f"local {key_text(key)}"
        return "(frame value stack)"

    def _lru_seeds(
        self, wrapper: object, children: Iterable[int], nodes: dict[int, object]
    ) -> list[Seed]:
        attrs = instance_dict(wrapper) or {}
        name = f"lru_cache of {func_name(attrs.get('__wrapped__'))}"
        cache: dict[object, object] | None = None
        for ref in gc.get_referents(wrapper):
            if type(ref) is dict and ref is not attrs:
                cache = ref
        keys = {id(k) for k, _ in dict_items(cache)} if cache is not None else set()
        rank = ROOT_KINDS.index("lru_cache")
        out: list[Seed] = []

        def add(label: str, role: str, child: int) -> None:
            out.append(
                Seed(rank, "lru_cache", name, name, label, role, id(wrapper), child, wrapper)
            )

        for child in children:
            obj = nodes.get(child)
            if cache is not None and obj is cache:
                for grandchild in self._children_of(child):
                    is_key = grandchild in keys
                    add(
                        "cache key" if is_key else "cached value",
                        "key" if is_key else "plain",
                        grandchild,
                    )
            elif child in keys:
                add("cache key", "key", child)
            elif obj is attrs:
                add("(attributes)", "attrs", child)
            else:
                add("cached value", "plain", child)
        return out

"""References the garbage collector cannot see: storages held from C++.

``gc.get_referents`` shows what a Python object refers to through Python.  Several
objects hold tensor storages from C++ instead, and a chain through them breaks: the
storage looks held by "native code", or on CPU (where no allocator counter exists)
not held at all.  This module asks those objects, through their public accessors, what
they hold, and returns the answer as extra edges for the retainer walk and extra
tensors for the census:

- **autograd graphs**: a tensor's ``grad_fn``, each node's ``next_functions``, the
  tensors a node saved for backward (``_raw_saved_*``: read without unpacking, so no
  saved-tensor hook runs; with a hook the packed object is the child), a Python
  ``Function``'s ``saved_tensors``, ``AccumulateGrad.variable`` and a leaf's ``.grad``;
- **TorchScript modules** (``torch.jit.trace`` / ``torch.jit.script``): the C++
  module behind ``_c`` and its parameters, buffers and submodules;
- **arrays viewing a storage's memory**: numpy arrays (not gc-tracked at all: found
  among the referents of the heap), whose ``.base`` leads to the tensor, and any
  object exposing ``__array_interface__`` / ``__cuda_array_interface__`` whose data
  pointer lies inside a known storage (CuPy, Numba, DLPack consumers).

torch is looked up in ``sys.modules``, never imported; nothing here touches device
memory (metadata and pointers only), so it may run in a forked heap-walk child.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memdiag.heap.introspect import defines, instance_dict, subclasses

__all__ = ["HiddenRefs", "find_hidden"]

_CHUNK = 256
_KINDS: dict[int, tuple[weakref.ReferenceType[type], str]] = {}
"""What each type is to this module ("" for nothing), keyed by ``id(type)`` and checked
through a weak reference: types are never kept alive, and never hashed or compared (a
metaclass' ``__eq__``/``__hash__`` is the program's code)."""
_SAVED_PREFIX = "_raw_saved_"


@dataclass
class HiddenRefs:
    """Edges the gc does not report, and the objects they lead to.

    ``edges`` maps ``id(parent)`` to ``(label, child)`` pairs; ``added`` holds every
    object on those edges that the heap listing may lack (autograd nodes, saved
    tensors, C++ script modules, untracked arrays), which also keeps them alive for
    as long as this object lives; ``tensors`` the tensors among them.
    """

    edges: dict[int, list[tuple[str, object]]] = field(default_factory=dict)
    added: list[object] = field(default_factory=list)
    tensors: list[object] = field(default_factory=list)
    named: set[int] = field(default_factory=set)
    """Ids of objects a chain shows by their type's name (autograd nodes, C++ modules)."""
    holders: list[object] = field(default_factory=list)
    """Objects of the listing whose type is one of ``find_hidden``'s ``holder_types``,
    in listing order (picked in the same pass that finds the tensors)."""
    tracked_arrays: bool = False
    """Whether the listing holds objects exposing an array interface (CuPy, Numba...)."""
    _known: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.edges)

    def add_edge(self, parent: object, label: str, child: object) -> None:
        self.edges.setdefault(id(parent), []).append((label, child))

    def keep(self, obj: object, *, tensor: bool = False, named: bool = False) -> bool:
        """Record ``obj`` as reached; ``False`` if it already was."""
        if named:
            self.named.add(id(obj))
        if id(obj) in self._known:
            return False
        self._known.add(id(obj))
        self.added.append(obj)
        if tensor:
            self.tensors.append(obj)
        return True

    def referents(self, *objs: object) -> list[object]:
        """``gc.get_referents(*objs)`` plus the hidden children of ``objs``."""
        refs = gc.get_referents(*objs)
        edges = self.edges
        if edges and not edges.keys().isdisjoint(map(id, objs)):
            for obj in objs:
                extra = edges.get(id(obj))
                if extra:
                    refs.extend(child for _, child in extra)
        return refs

    def reached_ids(self) -> set[int]:
        """Ids of every object on a hidden edge or kept here: references to them are not
        all visible to ``gc`` (C++ holds them)."""
        ids = set(self._known)
        for pairs in self.edges.values():
            ids.update(id(child) for _, child in pairs)
        return ids

    def label(self, parent: object, child: object) -> str | None:
        for label, target in self.edges.get(id(parent), ()):
            if target is child:
                return label
        return None

    def clear(self) -> None:
        self.edges.clear()
        self.added.clear()
        self.holders.clear()
        self.tensors.clear()
        self.named.clear()
        self._known.clear()


class _Finder:
    def __init__(self, torch: Any, out: HiddenRefs) -> None:
        self.torch = torch
        self.out = out
        self.tensor_type: type = torch._C.TensorBase
        self.disable = torch._C.DisableTorchFunctionSubclass
        jit = sys.modules.get("torch.jit")
        script = getattr(jit, "ScriptModule", None)
        self.script_type: type | None = script if isinstance(script, type) else None
        self.c_script_type: type | None = getattr(torch._C, "ScriptModule", None)
        self.saved_names: dict[type, tuple[str, ...]] = {}
        self.kinds = _KINDS
        self.storages: list[tuple[int, int, object]] = []  # (start, end, storage)
        self.heap_tensors: set[int] = set()

    # -- classification ------------------------------------------------------------
    def kind(self, tp: type) -> str:
        known = self.kinds.get(id(tp))
        if known is not None and known[0]() is tp:
            return known[1]
        kind = ""
        try:
            if issubclass(tp, self.tensor_type):
                kind = "tensor"
            elif self.script_type is not None and issubclass(tp, self.script_type):
                kind = "script"
            elif defines(tp, "__cuda_array_interface__") or defines(tp, "__array_interface__"):
                kind = "array"
        except TypeError:
            kind = ""
        try:
            self.kinds[id(tp)] = (weakref.ref(tp), kind)
        except TypeError:  # a type that refuses weak references: classify it each time
            pass
        return kind

    # -- the walk --------------------------------------------------------------------
    def run(self, objects: Sequence[object], arrays: bool, holder_types: Sequence[type]) -> None:
        grads: list[object] = []
        scripts: list[object] = []
        found_arrays: list[object] = []
        holders = self.out.holders
        # Every class of the process (``type.__subclasses__`` from ``object``: a few
        # thousand, classified once each and cached), then one pass over the heap picks
        # the objects of interesting ones by their type's id (C speed: no metaclass
        # ``__hash__`` is called, no Python-level call per object).
        kinds = {id(tp): self.kind(tp) for tp in subclasses(object)}
        wanted = {"tensor", "script", "array"}
        interesting = {key for key, kind in kinds.items() if kind in wanted}
        holding = {id(tp) for tp in holder_types}
        del kinds
        pick = interesting | holding
        picked = itertools.compress(objects, map(pick.__contains__, map(id, map(type, objects))))
        for obj in picked if pick else ():
            if holding and id(type(obj)) in holding:
                holders.append(obj)
            kind = self.kind(type(obj))
            if kind == "array":
                self.out.tracked_arrays = True
                if not arrays:
                    continue
            if kind == "tensor":
                self.heap_tensors.add(id(obj))
                if arrays:
                    self.index_storage(obj)
                if _requires_grad(obj, self.disable):
                    grads.append(obj)
            elif kind == "script":
                scripts.append(obj)
            elif kind == "array":
                found_arrays.append(obj)
        for script in scripts:
            self.script_module(script)
        self.autograd(grads)
        if arrays:
            found_arrays.extend(self.untracked_arrays(objects))
            self.storages.sort(key=lambda s: s[0])
            for array in found_arrays:
                self.array(array)

    def reach_tensor(self, parent: object, label: str, tensor: object) -> None:
        self.out.add_edge(parent, label, tensor)
        if id(tensor) not in self.heap_tensors:
            self.out.keep(tensor, tensor=True)

    # -- autograd --------------------------------------------------------------------
    def autograd(self, tensors: list[object]) -> None:
        out = self.out
        queue: list[object] = []
        with self.disable():
            for tensor in tensors:
                t: Any = tensor
                try:
                    node = t.grad_fn
                    grad = t.grad if t.is_leaf else None
                except Exception:  # noqa: BLE001 - odd subclasses
                    continue
                if node is not None:
                    out.add_edge(tensor, ".grad_fn", node)
                    if out.keep(node, named=True):
                        queue.append(node)
                if grad is not None:
                    self.reach_tensor(tensor, ".grad", grad)
            while queue:
                node = queue.pop()
                self.node(node, queue)

    def node(self, node: Any, queue: list[object]) -> None:
        out = self.out
        try:
            nexts = node.next_functions
        except Exception:  # noqa: BLE001
            nexts = ()
        for position, pair in enumerate(nexts or ()):
            child = pair[0] if pair else None
            if child is not None:
                out.add_edge(node, f".next_functions[{position}]", child)
                if out.keep(child, named=True):
                    queue.append(child)
        if type(node).__name__ == "AccumulateGrad":
            variable = getattr(node, "variable", None)
            if variable is not None:
                self.reach_tensor(node, ".variable", variable)
        for name in self.saved_attrs(type(node)):
            try:
                value = getattr(node, name)
            except Exception:  # noqa: BLE001 - freed by backward(), or not a tensor slot
                continue
            label = "._saved_" + name.removeprefix(_SAVED_PREFIX)
            items = value if isinstance(value, (list, tuple)) else (value,)
            for position, raw in enumerate(items):
                self.saved(node, label if len(items) == 1 else f"{label}[{position}]", raw)
        function_base = getattr(self.torch._C, "_FunctionBase", None)
        ctx: Any = node
        if isinstance(function_base, type) and isinstance(node, function_base):
            try:
                raws = ctx._raw_saved_tensors  # a Python Function's ctx; no unpacking
            except Exception:  # noqa: BLE001 - freed by backward()
                raws = ()
            for position, raw in enumerate(raws or ()):
                self.saved(node, f".saved_tensors[{position}]", raw)

    def saved(self, node: object, label: str, raw: Any) -> None:
        try:
            data = raw.data  # the saved tensor, or the object its pack hook returned
        except Exception:  # noqa: BLE001
            return
        if data is None:
            return
        if isinstance(data, self.tensor_type):
            self.reach_tensor(node, label, data)
        else:
            self.out.add_edge(node, f"{label} (packed by a saved-tensor hook)", data)
            self.out.keep(data)

    def saved_attrs(self, tp: type) -> tuple[str, ...]:
        names = self.saved_names.get(tp)
        if names is None:
            try:
                names = tuple(n for n in dir(tp) if n.startswith(_SAVED_PREFIX))
            except Exception:  # noqa: BLE001
                names = ()
            self.saved_names[tp] = names
        return names

    # -- TorchScript -------------------------------------------------------------------
    def script_module(self, wrapper: object) -> None:
        own = instance_dict(wrapper)
        c = own.get("_c") if own is not None else None
        if c is None or self.c_script_type is None or not isinstance(c, self.c_script_type):
            return
        if not self.out.keep(c, named=True):
            return
        stack = [c]
        torch_c = self.torch._C
        while stack:
            module = stack.pop()
            for kind in ("ParameterDict", "BufferDict"):
                try:
                    items = list(getattr(torch_c, kind)(module).items())
                except Exception:  # noqa: BLE001
                    continue
                for name, tensor in items:
                    if isinstance(tensor, self.tensor_type):
                        self.reach_tensor(module, f".{name}", tensor)
            try:
                subs = list(torch_c.ModuleDict(module).items())
            except Exception:  # noqa: BLE001
                subs = []
            for name, sub in subs:
                self.out.add_edge(module, f".{name}", sub)
                if self.out.keep(sub, named=True):
                    stack.append(sub)

    # -- arrays ------------------------------------------------------------------------
    def index_storage(self, tensor: Any) -> None:
        try:
            with self.disable():
                storage = tensor.untyped_storage()
                start = int(storage.data_ptr())
                size = int(storage.nbytes())
        except Exception:  # noqa: BLE001 - meta, sparse, fake
            return
        if start and size:
            self.storages.append((start, start + size, storage))

    def untracked_arrays(self, objects: Sequence[object]) -> list[object]:
        """Arrays the gc does not track (numpy's), found among the heap's referents.

        A dict or tuple holding only such arrays and atoms is not tracked either (a
        module's globals can be one): those one level down are searched too, and
        kept, since the retainer walk only visits what it lists.
        """
        numpy = sys.modules.get("numpy")
        base = getattr(numpy, "ndarray", None)
        if not isinstance(base, type):
            return []
        # Types by id(): a metaclass' __hash__ is the program's code (it may raise).
        wanted = set(map(id, subclasses(base)))
        found: dict[int, object] = {}
        containers: dict[int, object] = {}
        holder_types = {id(dict), id(tuple)}
        referents = gc.get_referents
        for start in range(0, len(objects), _CHUNK):
            refs = referents(*objects[start : start + _CHUNK])
            kinds = list(map(id, map(type, refs)))
            # C-level filters: no Python loop per reference.
            held = list(
                itertools.filterfalse(
                    gc.is_tracked, itertools.compress(refs, map(holder_types.__contains__, kinds))
                )
            )
            containers.update(zip(map(id, held), held, strict=True))
            if not wanted.isdisjoint(kinds):
                self.collect(refs, wanted, found)
        holders = list(containers.values())
        for start in range(0, len(holders), _CHUNK):
            chunk = holders[start : start + _CHUNK]
            if wanted.isdisjoint(map(id, map(type, referents(*chunk)))):
                continue
            for container in chunk:
                if self.collect(referents(container), wanted, found):
                    self.out.keep(container)
        return list(found.values())

    @staticmethod
    def collect(refs: list[object], wanted: set[int], found: dict[int, object]) -> bool:
        """Adds the refs whose type's id is in ``wanted``; whether there was one."""
        hit = False
        for ref in itertools.compress(refs, map(wanted.__contains__, map(id, map(type, refs)))):
            found.setdefault(id(ref), ref)
            hit = True
        return hit

    def array(self, array: Any) -> None:
        """``.base`` for numpy views; else a data pointer inside a known storage."""
        out = self.out
        out.keep(array)  # untracked: the retainer walk visits only what it lists
        current = array
        for _ in range(64):  # a chain of views; bounded against odd bases
            base = _plain_attr(current, "base")
            if base is None:
                break
            out.add_edge(current, ".base", base)
            if isinstance(base, self.tensor_type):
                if id(base) not in self.heap_tensors:
                    out.keep(base, tensor=True)
                return
            out.keep(base)
            if self.kind(type(base)) != "array":
                break
            current = base
        pointer = _data_pointer(array)
        if pointer is None:
            return
        storage = self.storage_at(pointer)
        if storage is not None:
            out.add_edge(array, f"(shares memory at 0x{pointer:x})", storage)
            out.keep(storage)

    def storage_at(self, pointer: int) -> object | None:
        index = bisect.bisect_right(self.storages, pointer, key=lambda s: s[0]) - 1
        if index >= 0:
            start, end, storage = self.storages[index]
            if start <= pointer < end:
                return storage
        return None


def _requires_grad(tensor: Any, disable: Any) -> bool:
    try:
        with disable():
            return bool(tensor.requires_grad)
    except Exception:  # noqa: BLE001
        return False


def _plain_attr(obj: object, name: str) -> object | None:
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001
        return None


def _data_pointer(array: object) -> int | None:
    for name in ("__cuda_array_interface__", "__array_interface__"):
        iface = _plain_attr(array, name)
        if isinstance(iface, dict):
            data = iface.get("data")
            if isinstance(data, tuple) and data and isinstance(data[0], int) and data[0]:
                return int(data[0])
    return None


def find_hidden(
    objects: Sequence[object], *, arrays: bool = True, holder_types: Sequence[type] = ()
) -> HiddenRefs:
    """Hidden references of ``objects`` (the heap listing): see the module docstring.

    ``arrays``: also look for arrays viewing storages (an extra pass over the heap's
    referents when numpy is imported); the cheap counters of the CPU backend leave it
    off, since an array's ``.base`` tensor is on the heap anyway.  ``holder_types``:
    the same pass also lists the objects of exactly these types (``holders``).
    """
    out = HiddenRefs()
    torch: Any = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "_C"):
        return out
    _Finder(torch, out).run(objects, arrays, holder_types)
    return out


def with_hidden(objects: Sequence[object], hidden: HiddenRefs) -> list[object]:
    """The heap listing followed by the objects only hidden references reach (a new
    list, copied at C speed)."""
    return [*objects, *hidden.added]

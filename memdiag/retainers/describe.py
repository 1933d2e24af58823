"""Names for objects and for the references between them, without running user code.

Everything here reads objects through their *type* and through C-level descriptors:
``type(o)`` (never ``o.__class__``, which proxies and mocks forward or fake), the
instance ``__dict__`` found on the type's MRO, ``dict.items`` called unbound, slot
member descriptors.  No user ``__repr__``, ``__eq__``, ``__hash__``, ``__getattr__``
or property runs; ``repr`` is only called on exact builtin atoms and truncated.
"""

from __future__ import annotations

import gc
import inspect
import os
import sys
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from memdiag.heap.census import _storage_bytes, _storage_of
from memdiag.heap.introspect import instance_dict
from memdiag.values.units import format_bytes

if TYPE_CHECKING:
    from memdiag.heap.hidden import HiddenRefs

__all__ = [
    "HopLabeller",
    "TensorInfo",
    "dict_items",
    "frame_locals",
    "frame_text",
    "func_name",
    "instance_dict",
    "is_a",
    "key_text",
    "node_text",
    "qualname",
    "safe_repr",
    "tensor_info",
    "type_name",
]

_ATOMS = (str, int, float, bool, bytes, type(None))
_ATOM_IDS = frozenset(map(id, _ATOMS))  # by id: a metaclass' __eq__ is the program's code
_GENERATOR_IDS = frozenset(
    map(id, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType))
)
_CONTAINERS = (dict, list, tuple, set, frozenset)
_MODULE_DICTS = frozenset({"_modules", "_parameters", "_buffers"})
_LABEL_CACHE_MIN = 64


def is_a(obj: object, cls: type | tuple[type, ...]) -> bool:
    """``isinstance`` by the real type: never asks the object for ``__class__``."""
    return issubclass(type(obj), cls)


def safe_repr(obj: object, limit: int = 40) -> str:
    """``repr`` for builtin atoms (truncated), ``<TypeName>`` for anything else."""
    tp = type(obj)
    if id(tp) in _ATOM_IDS:
        try:
            text = repr(obj)
        except Exception:  # noqa: BLE001 - a huge int may refuse to print
            return f"<{qualname(tp)}>"
        return text if len(text) <= limit else text[: limit - 3] + "..."
    return f"<{qualname(tp)}>"


def qualname(tp: type) -> str:
    try:
        name = type.__dict__["__qualname__"].__get__(tp)
    except Exception:  # noqa: BLE001 - a broken metaclass must not stop us
        return "?"
    return name if type(name) is str else "?"


def type_name(tp: type) -> str:
    """``module.Qualname``; builtins without the module."""
    try:
        module = type.__dict__["__module__"].__get__(tp)
    except Exception:  # noqa: BLE001
        module = None
    name = qualname(tp)
    if type(module) is not str or module == "builtins":
        return name
    return f"{module}.{name}"


def key_text(key: Any) -> str:
    """A dict key as written in source: ``'kv_cache'``, ``3``, ``('a', 1)``, ``<Foo>``."""
    tp = type(key)
    if tp is tuple and len(key) <= 4 and all(id(type(k)) in _ATOM_IDS for k in key):
        return safe_repr(key, 60)
    return safe_repr(key)


def _slot_values(obj: object) -> Iterator[tuple[str, object]]:
    tp = type(obj)
    try:
        mro = type.__dict__["__mro__"].__get__(tp)
    except Exception:  # noqa: BLE001
        return
    for klass in mro:
        namespace = type.__dict__["__dict__"].__get__(klass)
        for name, descriptor in namespace.items():
            if type(descriptor) is types.MemberDescriptorType and type(name) is str:
                try:
                    yield name, descriptor.__get__(obj, tp)
                except Exception:  # noqa: BLE001 - an empty slot raises AttributeError
                    continue


def dict_items(d: Any) -> list[tuple[Any, Any]]:
    """A snapshot of a dict's items, retried once if another thread mutates it."""
    for _ in range(3):
        try:
            return list(dict.items(d))
        except RuntimeError:
            continue
    return []


def _sequence_items(seq: Any) -> list[object]:
    for _ in range(3):
        try:
            if is_a(seq, list):
                return list(list.__iter__(seq))
            if is_a(seq, tuple):
                return list(tuple.__iter__(seq))
            return []
        except RuntimeError:
            continue
    return []


_OPTIMIZED = inspect.CO_OPTIMIZED


def frame_locals(frame: types.FrameType) -> list[tuple[Any, Any]]:
    """A frame's local variables, leaving no reference behind.

    On Python 3.11 reading ``f_locals`` of a function frame copies its fast locals
    into a dict stored on the frame, which keeps them alive after the program
    ``del``s them; for function frames that dict is emptied again here (the next
    ``f_locals`` or ``locals()`` refills it).  Module and class frames' ``f_locals``
    is their real namespace and is left alone.
    """
    try:
        local_vars = frame.f_locals
    except Exception:  # noqa: BLE001 - a frame torn down while we look
        return []
    if not is_a(local_vars, dict):
        return []
    items = dict_items(local_vars)
    if (
        frame.f_code.co_flags & _OPTIMIZED
        and sys.version_info < (3, 13)
        # Held by the frame, ``local_vars`` and getrefcount's argument only: a dict the
        # program kept from ``locals()`` has more owners and is never cleared.
        and sys.getrefcount(local_vars) <= 3
    ):
        dict.clear(local_vars)
    return items


def _describe_code(code: types.CodeType, lineno: int | None) -> str:
    name = getattr(code, "co_qualname", code.co_name)
    where = os.path.basename(code.co_filename)
    return f"{name} ({where}:{lineno})" if lineno is not None else f"{name} ({where})"


def frame_text(frame: types.FrameType) -> str:
    try:
        return "frame " + _describe_code(frame.f_code, frame.f_lineno)
    except Exception:  # noqa: BLE001
        return "frame"


def func_name(fn: object) -> str:
    """``module.qualname`` of a Python function, read from the function object."""
    if type(fn) is types.FunctionType:
        module = fn.__module__ if type(fn.__module__) is str else "?"
        return f"{module}.{fn.__qualname__}"
    if type(fn) is types.BuiltinFunctionType:
        return f"builtin {fn.__qualname__}"
    return f"<{qualname(type(fn))}>"


def node_text(obj: Any) -> str:
    """A short description of an object for a chain, from its type."""
    tp = type(obj)
    if tp is types.MethodType:
        owner = qualname(type(obj.__self__))
        func = obj.__func__
        name = func.__name__ if type(func) is types.FunctionType else qualname(type(func))
        return f"bound method {owner}.{name}"
    if tp is types.BuiltinMethodType and type(obj.__self__) is not types.ModuleType:
        return f"bound builtin {qualname(type(obj.__self__))}.{obj.__name__}"
    if tp is types.FunctionType:
        return f"function {obj.__qualname__}"
    if tp is types.FrameType:
        return frame_text(obj)
    if id(tp) in _GENERATOR_IDS:
        return f"{qualname(tp)} {obj.__qualname__}"
    if tp is types.ModuleType:
        namespace = instance_dict(obj) or {}
        return f"module {safe_repr(namespace.get('__name__'))}"
    if is_a(obj, type):
        return f"class {type_name(obj)}"
    return qualname(tp)


def _code_of(fn: object) -> types.CodeType | None:
    code = getattr(fn, "__code__", None) if type(fn) is types.FunctionType else None
    return code if type(code) is types.CodeType else None


class HopLabeller:
    """Labels ``parent -> child`` references, caching per-container indexes.

    ``role`` is what the parent is to *its* parent: ``attrs`` (an instance, class or
    module namespace, keys print as ``.name``), ``modules`` (an ``nn.Module``'s
    ``_modules``/``_parameters``/``_buffers``), ``closure`` (a function's cells, with
    the function), ``cache`` (an ``lru_cache``'s dict), ``key`` (inside a cache key).
    """

    def __init__(self, nn_module: type | None, hidden: HiddenRefs | None = None) -> None:
        self._hidden = hidden
        self._nn_module = nn_module
        self._index: dict[int, dict[int, str]] = {}

    def _container_index(self, parent: Any) -> dict[int, str]:
        cached = self._index.get(id(parent))
        if cached is not None:
            return cached
        index: dict[int, str] = {}
        if is_a(parent, dict):
            for key, value in dict_items(parent):
                index.setdefault(id(value), f"[{key_text(key)}]")
                index.setdefault(id(key), f"(key {key_text(key)})")
        elif is_a(parent, (list, tuple)):
            for position, value in enumerate(_sequence_items(parent)):
                index.setdefault(id(value), f"[{position}]")
        self._index[id(parent)] = index
        return index

    def _lookup(self, parent: Any, child: object) -> str | None:
        if is_a(parent, dict):
            size = dict.__len__(parent)
        elif is_a(parent, (list, tuple)):
            size = (
                len(_sequence_items(parent))
                if type(parent) is not list and type(parent) is not tuple
                else len(parent)
            )
        else:
            return None
        if size >= _LABEL_CACHE_MIN:
            return self._container_index(parent).get(id(child))
        if is_a(parent, dict):
            items = dict_items(parent)
            for key, value in items:
                if value is child:
                    return f"[{key_text(key)}]"
            for key, _ in items:
                if key is child:
                    return f"(key {key_text(key)})"
            return None
        for position, value in enumerate(_sequence_items(parent)):
            if value is child:
                return f"[{position}]"
        return None

    def hop(self, parent: Any, role: str, child: object, owner: Any) -> tuple[str, str]:
        """``(label, role of child)`` for one reference; ``owner`` is the parent's parent."""
        if self._hidden:
            held = self._hidden.label(parent, child)
            if held is not None:
                return held, "plain"
        ptype = type(parent)
        if role in ("attrs", "modules") and is_a(parent, dict):
            for key, value in dict_items(parent):
                if value is child and type(key) is str:
                    if role == "modules" and key.isdigit():
                        return f"[{key}]", "plain"
                    if key in _MODULE_DICTS and self._is_nn_module(owner):
                        return "", "modules"
                    return f".{key}", "plain"
        if role == "closure" and ptype is tuple:
            code = _code_of(owner)
            for position, cell in enumerate(_sequence_items(parent)):
                if cell is child:
                    names = code.co_freevars if code is not None else ()
                    var = f" '{names[position]}'" if position < len(names) else ""
                    fn = owner.__qualname__ if code is not None else "function"
                    return f"<cell{var} of {fn}>", "cell"
        if role == "key" and ptype is tuple:
            return "", "plain"
        if role == "cache" and is_a(parent, dict):
            for key, value in dict_items(parent):
                if key is child:
                    return "cache key", "key"
                if value is child:
                    return "cached value", "plain"
        if ptype is types.CellType:
            return "", "plain"
        if ptype is types.MethodType:
            if child is parent.__self__:
                return "", "plain"
            return ".__func__", "plain"
        if ptype is types.FunctionType:
            return self._function_hop(parent, child)
        if ptype is types.TracebackType:
            if child is parent.tb_next:
                return ".tb_next", "plain"
            return "", "plain"
        if ptype is types.FrameType:
            return self._frame_hop(parent, child), "plain"
        if id(ptype) in _GENERATOR_IDS:
            frame = getattr(parent, "gi_frame", None) or getattr(parent, "cr_frame", None)
            if type(frame) is types.FrameType:
                label = self._frame_hop(frame, child)
                return f"{label} of {node_text(parent)}", "plain"
            return "(suspended locals)", "plain"
        if is_a(parent, BaseException):
            for name in ("__traceback__", "__context__", "__cause__", "args"):
                try:
                    if BaseException.__dict__[name].__get__(parent) is child:
                        return f".{name}", "plain"
                except Exception:  # noqa: BLE001
                    continue
        if is_a(parent, (dict, list, tuple)):
            found = self._lookup(parent, child)
            if found is not None:
                return found, "plain"
        if is_a(parent, (set, frozenset)):
            return "(set member)", "plain"
        own = instance_dict(parent)
        if own is not None:
            if own is child:
                return "", "attrs"
            for key, value in dict_items(own):
                if value is child and type(key) is str:
                    if key in _MODULE_DICTS and self._is_nn_module(parent):
                        return "", "modules"
                    return f".{key}", "plain"
        for name, value in _slot_values(parent):
            if value is child:
                return f".{name}", "plain"
        if ptype is types.ModuleType:
            return "(module state)", "plain"
        if is_a(parent, type):
            try:
                namespace = gc.get_referents(type.__dict__["__dict__"].__get__(parent))
            except Exception:  # noqa: BLE001
                namespace = []
            if any(n is child for n in namespace):
                return "", "attrs"
            return "(class internals)", "plain"
        return f"(referent of {qualname(ptype)})", "plain"

    def _is_nn_module(self, obj: object) -> bool:
        return self._nn_module is not None and is_a(obj, self._nn_module)

    def _function_hop(self, fn: object, child: object) -> tuple[str, str]:
        for name, role in (
            ("__closure__", "closure"),
            ("__defaults__", "plain"),
            ("__kwdefaults__", "attrs"),
            ("__dict__", "attrs"),
            ("__globals__", "attrs"),
        ):
            if getattr(fn, name, None) is child:
                return ("" if role == "closure" else f".{name}"), role
        return "(function internals)", "plain"

    def _frame_hop(self, frame: types.FrameType, child: object) -> str:
        if child is frame.f_back:
            return ".f_back"
        for key, value in frame_locals(frame):
            if value is child:
                return f"local {key_text(key)}"
        return "(frame value stack)"


class TensorInfo:
    """Metadata read from a tensor without dispatching to Python subclasses."""

    __slots__ = ("device", "dtype", "kind", "nbytes", "shape")

    def __init__(self, kind: str, device: str, dtype: str, shape: str, nbytes: int) -> None:
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.shape = shape
        self.nbytes = nbytes

    def text(self, storage_bytes: int) -> str:
        size = format_bytes(self.nbytes)
        if self.dtype == "bytes":  # a storage object, no tensor
            return f"{self.kind} on {self.device}, {format_bytes(storage_bytes or self.nbytes)}"
        base = f"{self.kind} {self.dtype}{self.shape} on {self.device}, {size}"
        if self.nbytes < storage_bytes:
            base += f", view of a {format_bytes(storage_bytes)} storage"
        return base

    def short(self, storage_bytes: int) -> str:
        if self.nbytes < storage_bytes:
            own = format_bytes(self.nbytes)
            return f"{self.device}, {own} view of a {format_bytes(storage_bytes)} storage"
        return f"{self.device}, {format_bytes(storage_bytes)}"


def tensor_info(obj: Any) -> TensorInfo:
    """Kind, dtype, shape, device and own size of a tensor or storage; never raises."""
    torch: Any = sys.modules.get("torch")
    kind = qualname(type(obj))
    if torch is None:
        return TensorInfo(kind, "?", "?", "", 0)
    try:
        with torch._C.DisableTorchFunctionSubclass():
            if is_a(obj, torch.UntypedStorage):
                return TensorInfo(kind, str(obj.device), "bytes", "", int(obj.nbytes()))
            shape = "[" + ", ".join(str(int(s)) for s in obj.shape) + "]"
            dtype = str(obj.dtype).removeprefix("torch.")
            if obj.layout == torch.strided:
                own = int(obj.numel()) * int(obj.element_size())
            else:  # sparse: its values and indices, not a dense view
                own = _storage_bytes(obj, _storage_of(obj))
            return TensorInfo(kind, str(obj.device), dtype, shape, own)
    except Exception:  # noqa: BLE001 - fake, meta or broken subclasses
        return TensorInfo(kind, "?", "?", "", 0)

"""Reading objects through their *type*, so that no user code runs.

``type(o)`` (never ``o.__class__``, which proxies and mocks forward or fake), the
instance ``__dict__`` found on the type's MRO through the type's own descriptor,
``type.__subclasses__`` called unbound.  No user ``__getattr__``, property,
``__eq__`` or ``__hash__`` runs; a type that refuses is skipped, never raised.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

__all__ = ["defines", "instance_dict", "subclasses"]

_DICT_DESCRIPTORS = (types.GetSetDescriptorType, types.MemberDescriptorType)


def _mro(tp: type) -> tuple[type, ...]:
    try:
        mro: tuple[type, ...] = type.__dict__["__mro__"].__get__(tp)
    except Exception:  # noqa: BLE001 - an odd metaclass: nothing to read
        return ()
    return mro


def instance_dict(obj: object) -> dict[str, Any] | None:
    """The instance ``__dict__`` through the type's own descriptor, or ``None``."""
    tp = type(obj)
    for klass in _mro(tp):
        descriptor = type.__dict__["__dict__"].__get__(klass).get("__dict__")
        if descriptor is None:
            continue
        if type(descriptor) not in _DICT_DESCRIPTORS:
            return None  # a user-defined __dict__ property: not read
        try:
            value = descriptor.__get__(obj, tp)
        except Exception:  # noqa: BLE001
            return None
        return value if issubclass(type(value), dict) else None
    return None


def defines(tp: type, name: str) -> bool:
    """Whether ``tp`` or a base defines ``name`` in its class namespace."""
    return any(name in type.__dict__["__dict__"].__get__(k) for k in _mro(tp))


def subclasses(bases: type | Iterable[type]) -> list[type]:
    """Every subclass of ``bases`` (themselves included), each once, bases first."""
    stack = [bases] if isinstance(bases, type) else list(bases)
    stack.reverse()
    found: list[type] = []
    seen: set[int] = set()
    while stack:
        cls = stack.pop()
        if id(cls) in seen:
            continue
        seen.add(id(cls))
        found.append(cls)
        try:
            stack.extend(type.__subclasses__(cls))
        except Exception:  # noqa: BLE001 - a metaclass without __subclasses__
            continue
    return found

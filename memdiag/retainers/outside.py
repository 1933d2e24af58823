"""References from outside the Python heap: what keeps alive an object nothing refers to.

After the check's ``gc.collect()``, an object that no Python object refers to (no
referrer in the heap) and no root reaches is not garbage: something ``gc`` cannot
see holds it.  Several such holders can be named exactly, without changing them:

- ``atexit``'s callbacks (kept in the interpreter until it exits);
- a thread's current ``contextvars`` context (a ``ContextVar``'s value lives there
  until it is reset);
- signal handlers installed with ``signal.signal``;
- the ``sys.settrace`` / ``sys.setprofile`` functions.

- the arguments of an atexit callback (found by unregistering the callbacks one by
  one in a forked child and seeing which tuple or dict loses a reference).

Anything else is "native code" (a C extension, a hook registered from C).  None of
these is an unreachable cycle that ``gc.collect()`` would free, and the advice says
what does free them.
"""

from __future__ import annotations

import atexit
import contextvars
import gc
import signal
import sys
import threading
import types
from collections.abc import Callable, Container
from dataclasses import dataclass

from memdiag.heap.view import HeapError, call_in_fork
from memdiag.retainers.describe import node_text
from memdiag.values.retainers import Edge

__all__ = [
    "ATEXIT",
    "CONTEXT",
    "LOGGER_ROOT",
    "OutsideHolders",
    "OutsideRoot",
    "is_logger_type",
    "logger_root",
    "outside_note",
]

ATEXIT = "atexit callbacks"
CONTEXT = "contextvars context"
_SIGNAL = "signal handler for "
_TRACE = "sys.settrace() function"
_PROFILE = "sys.setprofile() function"

_NOTES = {
    ATEXIT: (
        "atexit keeps its callbacks, and everything they reach, until the interpreter "
        "exits; gc.collect() does not free them"
    ),
    CONTEXT: (
        "a ContextVar's value lives in the context it was set in until it is reset; "
        "gc.collect() does not free it"
    ),
    _SIGNAL: "the signal module keeps its handler until another one is installed",
    _TRACE: "the interpreter keeps the trace function until sys.settrace(None)",
    _PROFILE: "the interpreter keeps the profile function until sys.setprofile(None)",
    "logging.getLogger(": (
        "logging keeps every logger in logging.Logger.manager.loggerDict for the life of "
        "the process: dropping your reference to it frees nothing"
    ),
}


LOGGER_ROOT = "logging.getLogger"
_LOGGER_TYPES = frozenset({"logging.Logger", "logging.RootLogger", "logging.PlaceHolder"})


def logger_root(chain: tuple[Edge, ...]) -> tuple[int, str] | None:
    """Where a chain enters logging's registry, ``.manager.loggerDict['name']``: the
    hop's index and the root to name instead, ``logging.getLogger('name')``.  Every
    logger reaches every other through the manager, so the module global the search
    happened to start from (``asyncio.log.logger``) is no root to cut."""
    for index in range(len(chain) - 2):
        manager, table, entry = chain[index : index + 3]
        if (
            manager.label == ".manager"
            and manager.type_name == "logging.Manager"
            and table.label == ".loggerDict"
            and entry.label.startswith("[")
        ):
            return index + 2, f"{LOGGER_ROOT}({entry.label[1:-1]})"
    return None


def is_logger_type(type_name: str) -> bool:
    """Whether a chain hop of this type is a logger that logging keeps for good."""
    return type_name in _LOGGER_TYPES


def outside_note(root_name: str) -> str:
    """Why the holder named ``root_name`` outlives ``gc.collect()``; ``""`` if not one."""
    for prefix, note in _NOTES.items():
        if root_name.startswith(prefix):
            return note
    return ""


@dataclass(frozen=True)
class OutsideRoot:
    """A named holder outside the heap: the chain starts at ``start`` with ``label``."""

    name: str
    signature_name: str
    label: str
    start: object


class _Probe:
    """Equal to nothing; remembers what it was compared with."""

    __slots__ = ("seen",)  # __eq__ without __hash__: Python makes it unhashable

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __eq__(self, other: object) -> bool:
        self.seen.append(id(other))
        return False

    def __call__(self) -> None:  # what atexit.unregister accepts
        return None


def _atexit_ids() -> list[int]:
    # atexit.unregister(x) compares every registered callable with x and removes the
    # equal ones: a probe equal to nothing lists them and removes none.
    probe = _Probe()
    try:
        atexit.unregister(probe)
    except Exception:  # noqa: BLE001 - a callback's own __eq__ raised
        pass
    return probe.seen


def atexit_callback_ids(*, in_child: bool) -> frozenset[int]:
    """``id()`` of every callable registered with ``atexit`` (none removed).

    A callback's own ``__eq__`` is compared first (the program's code, which could
    even claim equality and be removed), so outside a forked child this runs in one:
    whatever that code does stays there.  Empty when no fork is possible."""
    counter = getattr(atexit, "_ncallbacks", None)
    if callable(counter) and counter() == 0:
        return frozenset()
    if in_child:
        return frozenset(_atexit_ids())
    try:
        return frozenset(call_in_fork(_atexit_ids, timeout=30.0))
    except (HeapError, OSError):
        return frozenset()


ARGUMENTS = "arguments of "
"""Label of an atexit callback's argument tuple or keyword dict on a chain."""


def _atexit_arguments(candidates: list[object]) -> dict[int, str]:
    """In a forked child: which of ``candidates`` (tuples and dicts nothing in the
    heap refers to) are the arguments of an atexit callback, and of which one.

    atexit keeps each callback's arguments in C, where no referrer search sees them.
    Unregistering one callback at a time drops atexit's reference to its argument
    tuple and keyword dict: the candidates whose reference count falls are those."""
    ids = _atexit_ids()
    if not ids:
        return {}
    gc.unfreeze()  # the child's own heap: callbacks frozen by the program are listed too
    wanted = set(ids)
    found = {id(o): o for o in gc.get_objects() if id(o) in wanted}
    callbacks = [found[i] for i in dict.fromkeys(ids) if i in found]
    counts = [sys.getrefcount(c) for c in candidates]
    owners: dict[int, str] = {}
    for callback in callbacks:
        try:
            atexit.unregister(callback)
        except Exception:  # noqa: BLE001 - a callback's own __eq__ raised
            continue
        now = [sys.getrefcount(c) for c in candidates]
        for candidate, before, after in zip(candidates, counts, now, strict=True):
            if after < before:
                owners.setdefault(id(candidate), _callback_text(callback))
        counts = now
    return owners


def _callback_text(callback: object) -> str:
    """``function save``; a builtin by its name (``builtin print``), not its type."""
    if type(callback) is types.BuiltinFunctionType:
        name = callback.__name__
        return f"builtin {name}" if type(name) is str else node_text(callback)
    return node_text(callback)


class OutsideHolders:
    """Names objects kept alive from outside the Python heap, read once per analysis.

    ``unreferenced()``: the tuples and dicts of the searched graph that nothing in the
    heap refers to (asked once, when the first one needs a name): atexit may hold them
    as a callback's arguments."""

    def __init__(
        self, *, in_child: bool, unreferenced: Callable[[], list[object]] | None = None
    ) -> None:
        self._in_child = in_child
        self._callables: dict[int, str] | None = None
        self._atexit: frozenset[int] | None = None
        self._unreferenced = unreferenced
        self._arguments: dict[int, str] | None = None

    def _argument_owner(self, obj: object) -> str | None:
        if self._arguments is None:
            self._arguments = {}
            counter = getattr(atexit, "_ncallbacks", None)
            if self._unreferenced is not None and not (callable(counter) and counter() == 0):
                candidates = self._unreferenced()
                try:
                    self._arguments = call_in_fork(
                        lambda: _atexit_arguments(candidates), timeout=30.0
                    )
                except (HeapError, OSError):
                    self._arguments = {}
        return self._arguments.get(id(obj))

    def _named_callables(self) -> dict[int, str]:
        if self._callables is None:
            named: dict[int, str] = {}
            for number in sorted(signal.valid_signals()):
                try:
                    handler = signal.getsignal(number)
                except (ValueError, OSError):
                    continue
                if handler is not None and callable(handler):
                    name = signal.Signals(number).name if number in _SIGNUMS else str(number)
                    named.setdefault(id(handler), _SIGNAL + name)
            for found, label in ((sys.gettrace(), _TRACE), (sys.getprofile(), _PROFILE)):
                if found is not None:
                    named.setdefault(id(found), label)
            self._callables = named
        return self._callables

    def name(self, obj: object, inside: Container[int]) -> OutsideRoot | None:
        """The holder of ``obj`` (an object no Python object refers to), or ``None``.

        ``inside``: ids of the objects between ``obj`` and the tensor it keeps alive
        (a context's variables are named by the one whose value is among them)."""
        if type(obj) is contextvars.Context:
            return self._context(obj, inside)
        if type(obj) is tuple or type(obj) is dict:
            owner = self._argument_owner(obj)
            if owner is not None:
                return OutsideRoot(ATEXIT, ATEXIT, f"{ARGUMENTS}{owner}", obj)
            return None
        if not callable(obj):
            return None
        named = self._named_callables().get(id(obj))
        if named is None:
            if self._atexit is None:
                self._atexit = atexit_callback_ids(in_child=self._in_child)
            named = ATEXIT if id(obj) in self._atexit else None
        if named is None:
            return None
        return OutsideRoot(named, named, node_text(obj), obj)

    def _context(self, ctx: contextvars.Context, inside: Container[int]) -> OutsideRoot:
        current = contextvars.copy_context()  # shares the current context's mapping
        mine = {id(r) for r in gc.get_referents(ctx)}
        if any(id(r) in mine for r in gc.get_referents(current)):
            thread = threading.current_thread()
            name = thread.__dict__.get("_name") if hasattr(thread, "__dict__") else None
            where = f"{CONTEXT} of thread '{name}'" if type(name) is str else CONTEXT
        else:
            where = CONTEXT
        del current
        found = [(str(var.name), value) for var, value in ctx.items() if id(value) in inside]
        if not found:
            return OutsideRoot(where, CONTEXT, "", ctx)
        name, value = min(found, key=lambda pair: pair[0])
        return OutsideRoot(where, f"{CONTEXT}:{name}", f"ContextVar {name!r}", value)


_SIGNUMS = frozenset(int(s) for s in signal.Signals)

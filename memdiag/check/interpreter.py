"""The interpreter as memdiag found it, put back around memdiag's own work.

A watched program may leave the interpreter in a state memdiag's code cannot run in:
``builtins.len`` or ``builtins.print`` replaced, ``time.sleep = None``,
``sys.modules["json"] = None``, ``sys.setrecursionlimit(50)``, a ``gc.callbacks``
entry or a ``sys.settrace`` function that raises or blocks.  Python code reads all of
these at call time, stdlib code included, so a check run in that state fails with an
error of the program's making (or hangs in its callback).

:class:`InterpreterState` is taken before the program runs (a shallow copy of the
builtins, of the callables and modules of the standard-library modules already
imported, and of ``sys.modules``).  :meth:`InterpreterState.restored` puts the
captured entries back for the duration of memdiag's check and reports, and then puts
the program's own values back: the program is not changed (its atexit handlers, run
after the check, see what it set).  Only what changed is touched, so the cost is one
identity comparison per captured entry.

A pytest check runs once per test, and most pass on counters alone: ``restored(lazy=True)``
puts back the builtins, ``sys.modules`` and the few standard modules that path calls
into (:data:`_CORE`), and the rest only when :func:`widen` is called (the check goes past
its counters, or a failure is described), which halves the cost of a clean check's
restore.  Hooks a test runner swaps around every test (``threading.excepthook``,
``warnings``' display functions) are left as found, like ``sys``'s hooks: they are the
program's, and putting pytest's warning recorder aside would print a warning the
check raises instead of recording it.
"""

from __future__ import annotations

import builtins
import gc
import operator
import sys
import threading
import types
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["InterpreterState", "widen"]

_MISSING = object()
_KEEP = {
    # sys's hooks memdiag calls on purpose (the program's excepthook runs on its failure)
    "sys": frozenset({"excepthook", "displayhook", "breakpointhook", "unraisablehook"}),
    # swapped by test runners around every test (pytest's thread-exception and
    # warning capture): the program's hooks, as sys's are
    "threading": frozenset({"excepthook"}),
    "warnings": frozenset({"showwarning", "_showwarnmsg_impl"}),
}
_USED = (
    "argparse atexit bisect collections collections.abc contextlib contextvars ctypes "
    "dataclasses decimal enum errno fnmatch functools gc hashlib html importlib "
    "importlib.machinery importlib.util inspect io itertools json json.decoder "
    "json.encoder marshal math multiprocessing os posixpath pathlib pickle re runpy "
    "secrets select shutil signal stat subprocess sys tempfile threading time traceback "
    "types typing warnings weakref xml.etree.ElementTree zipfile"
).split()
"""The standard-library modules memdiag's code calls into (its imports): their
functions are what a program's replacement would break.  Restoring every module of
the process would cost milliseconds per pytest check."""
MIN_RECURSION = 1000
"""The recursion limit memdiag's own code runs under at least."""


_CORE = frozenset(
    (
        "collections collections.abc contextlib dataclasses enum functools gc itertools json "
        "json.decoder json.encoder os posixpath signal sys threading time types weakref"
    ).split()
)
"""The standard-library modules a check that passes on its counters calls into (with
the builtins and ``sys.modules``), and json (the JSON report's spool writes a line per
test): what ``restored(lazy=True)`` puts back at once."""


def _ours(name: str) -> bool:
    return name in _USED_SET or name.partition(".")[0] in ("memdiag", "rich", "memdiag_pytest")


_USED_SET = frozenset(_USED)


_all, _map, _zip, _is = all, map, zip, operator.is_
"""Bound at import: the program may replace the builtins by the time they are needed."""


_Entry = tuple[dict[str, Any], tuple[str, ...], tuple[Any, ...], Callable[[Any], Any]]


def _entry(space: dict[str, Any], captured: dict[str, Any]) -> _Entry:
    keys = tuple(captured)
    # itemgetter builds the tuple of the current values in C: with the tuple compare
    # (identity first), an unchanged namespace costs ~30 ns a name, not ~100.
    getter = operator.itemgetter(*keys) if len(keys) > 1 else _as_tuple(keys)
    return space, keys, tuple(captured.values()), getter


def _as_tuple(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    def get(space: Any) -> tuple[Any, ...]:
        return tuple(space[k] for k in keys)

    return get


def _captured(module: types.ModuleType, name: str) -> dict[str, Any]:
    """The module's callables and submodules (data is the program's to change)."""
    try:
        namespace = dict(vars(module))
    except TypeError:
        return {}
    keep = {}
    left = _KEEP.get(name, frozenset())
    for key, value in namespace.items():
        if key in left:
            continue
        if isinstance(value, (types.ModuleType, type)) or callable(value):
            keep[key] = value
    return keep


class InterpreterState:
    """What memdiag's code relies on, captured before the program runs."""

    def __init__(self) -> None:
        modules = {name: m for name, m in sys.modules.items() if _ours(name)}
        modules.pop("__main__", None)  # the runner's to swap
        self._core: list[_Entry] = [
            _entry(builtins.__dict__, dict(builtins.__dict__)),
            _entry(sys.modules, modules),
        ]
        self._rest: list[_Entry] = []
        for name, module in modules.items():
            if isinstance(module, types.ModuleType) and name in _USED_SET:
                tier = self._core if name in _CORE else self._rest
                tier.append(_entry(module.__dict__, _captured(module, name)))
        self._recursion = sys.getrecursionlimit()
        self._path = list(sys.path)
        self._found_hooks = (sys.gettrace(), sys.getprofile(), _thread_hooks())

    def restored(self, *, lazy: bool = False) -> _Restored:
        """The captured interpreter for a ``with`` block; the program's own values after.

        ``lazy``: put back the builtins, ``sys.modules`` and :data:`_CORE` now, the other
        standard modules when :func:`widen` is called inside the block.

        Also for the block: no ``gc.callbacks``, no trace or profile function (for
        this thread and new threads), a recursion limit of at least
        :data:`MIN_RECURSION`, and the import path memdiag started with (kept after
        the block: a program's own directory first on it could shadow what memdiag
        imports).  ``sys.modules["__main__"]`` is the runner's to swap."""
        return _Restored(self, lazy)

    def _put_back(self, undo: list[Callable[[], None]], *, lazy: bool) -> None:
        self._put_back_spaces(self._core, undo)
        if not lazy:
            self._put_back_spaces(self._rest, undo)
        self._put_back_rest(undo)

    @staticmethod
    def _put_back_spaces(spaces: list[_Entry], undo: list[Callable[[], None]]) -> None:
        # Builtins first.  Only names bound in this module are called until they are
        # back (len(), getattr(), map() may be the program's replacements by now); an
        # unchanged namespace costs one pass at C speed.
        for space, keys, values, getter in spaces:
            try:
                # Equal tuples: every value is the captured object (identity is tested
                # first; a value that differs makes the names be compared one by one).
                # Only a value the program put in a standard module's namespace can
                # bring its own __eq__ here: one that raises sends us the slow way.
                if getter(space) == values:
                    continue
            except Exception:  # noqa: BLE001 - a name deleted, or an __eq__ that raises
                pass
            if _all(_map(_is, _map(space.get, keys), values)):
                continue
            for key, value in _zip(keys, values):
                now = space.get(key, _MISSING)
                if now is not value:
                    space[key] = value
                    undo.append(_restore_item(space, key, now))

    def _put_back_rest(self, undo: list[Callable[[], None]]) -> None:
        callbacks = list(gc.callbacks)
        if callbacks:
            gc.callbacks.clear()
            undo.append(lambda: gc.callbacks.extend(callbacks))
        self._hooks(undo, self._found_hooks)
        limit = sys.getrecursionlimit()
        if limit < max(self._recursion, MIN_RECURSION):
            sys.setrecursionlimit(max(self._recursion, MIN_RECURSION))
            undo.append(lambda: sys.setrecursionlimit(limit))
        if sys.path != self._path:
            # Not undone: the runner puts its own entry (sys.path[0]) back meanwhile,
            # and the process ends after memdiag's reports.
            sys.path[:] = self._path

    @staticmethod
    def _hooks(undo: list[Callable[[], None]], hooks: tuple[Any, Any, tuple[Any, Any]]) -> None:
        # Hooks memdiag found (a coverage tool's) stay; the program's are taken off.
        found_trace, found_profile, found_threads = hooks
        trace, profile = sys.gettrace(), sys.getprofile()
        if trace is not found_trace:
            sys.settrace(found_trace)
            undo.append(lambda: sys.settrace(trace))
        if profile is not found_profile:
            sys.setprofile(found_profile)
            undo.append(lambda: sys.setprofile(profile))
        threads = _thread_hooks()
        if threads != found_threads:
            _set_thread_hooks(found_threads)
            undo.append(lambda: _set_thread_hooks(threads))


def _thread_hooks() -> tuple[Any, Any]:
    """The hooks new threads start with (``threading.settrace`` / ``setprofile``)."""
    return (threading.__dict__.get("_trace_hook"), threading.__dict__.get("_profile_hook"))


def _set_thread_hooks(hooks: tuple[Any, Any]) -> None:
    threading.settrace(hooks[0])
    threading.setprofile(hooks[1])


def _restore_item(space: dict[str, Any], key: str, value: object) -> Callable[[], None]:
    def undo() -> None:
        if value is _MISSING:
            space.pop(key, None)
        else:
            space[key] = value

    return undo


_OPEN: list[_Restored] = []
"""The ``restored()`` blocks open now, innermost last."""


def widen() -> None:
    """Put back the rest of the interpreter in the innermost ``restored(lazy=True)``
    block (a no-op outside one, or when it is already whole): called before a check
    goes past its counters, and before a failure is described."""
    if _OPEN:
        _OPEN[-1]._widen()


class _Restored:
    """``with state.restored():`` -- a plain class: contextlib itself calls builtins."""

    def __init__(self, state: InterpreterState, lazy: bool = False) -> None:
        self._state = state
        self._lazy = lazy
        self._undo: list[Callable[[], None]] = []
        self.changed = False
        """Whether anything had to be put back (the program left the interpreter
        changed): known once the block is entered."""

    def __enter__(self) -> None:
        """Puts back what is not back yet: entering again (after a signal handler of
        the program raised into the first entry) resumes."""
        if not _OPEN or _OPEN[-1] is not self:
            _OPEN.append(self)
        self._state._put_back(self._undo, lazy=self._lazy)
        self.changed = self.changed or bool(self._undo)

    def _widen(self) -> None:
        if self._lazy:
            self._state._put_back_spaces(self._state._rest, self._undo)
            self._lazy = False
            self.changed = self.changed or bool(self._undo)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        undo, self._undo = self._undo, []
        if _OPEN and _OPEN[-1] is self:
            _OPEN.pop()
        if exc is not None:
            # memdiag failed: its error message is written next, in this interpreter;
            # the process ends right after it.
            return
        for step in reversed(undo):
            try:
                step()
            except Exception:  # noqa: BLE001 - put back as much as can be put back
                pass

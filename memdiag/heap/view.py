"""Access to every gc-tracked object, including those frozen by ``gc.freeze()``.

Objects moved to the permanent generation by ``gc.freeze()`` are absent from
``gc.get_objects()`` and invisible to ``gc.get_referrers()``.  CPython offers no way
to list them without ``gc.unfreeze()``, and no way to re-freeze exactly the same
set afterwards (``gc.freeze()`` would also freeze everything created since).  So
when anything is frozen, the work runs in a forked child: the child unfreezes its
copy of the heap, calls the function, and sends the (picklable, plain-data)
result back through a pipe.  The watched program's freeze state is never touched.

The child does pure-Python work only; it must not launch device work (a forked
child of a CUDA process cannot use CUDA), which is why the functions given here
read tensor metadata only (``data_ptr``, ``nbytes``, ``shape``, ``dtype``).
"""

from __future__ import annotations

import gc
import itertools
import os
import pickle
import select
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_monotonic = time.monotonic  # captured: a program's fake clock must not stop the timeout

__all__ = [
    "HeapError",
    "HeapView",
    "call_in_fork",
    "call_with_full_heap",
    "find_instances",
    "freeze_count",
]


class HeapError(RuntimeError):
    """The full-heap walk could not be done (no fork, child crashed or timed out)."""


@dataclass(frozen=True)
class HeapView:
    """Every gc-tracked object of the process at one moment.

    ``frozen_ids`` holds the ``id()`` of objects that were in the permanent
    generation (frozen by ``gc.freeze()``); ``in_child`` says whether this view lives
    in a forked copy of the process (then object identities only make sense there).
    """

    objects: list[object]
    frozen_ids: frozenset[int]
    in_child: bool


def freeze_count() -> int:
    """How many objects ``gc.freeze()`` has moved to the permanent generation."""
    return gc.get_freeze_count()


def call_with_full_heap(fn: Callable[[HeapView], T], *, timeout: float = 300.0) -> T:
    """Call ``fn`` with a view of the whole heap, frozen objects included.

    Without frozen objects this runs in-process.  With frozen objects it runs in a
    forked child (POSIX only) and ``fn``'s result must be picklable plain data.
    Raises :class:`HeapError` when the child cannot be run or fails.
    """
    if gc.get_freeze_count() == 0:
        view = HeapView(objects=gc.get_objects(), frozen_ids=frozenset(), in_child=False)
        try:
            return fn(view)
        finally:
            del view
    if not hasattr(os, "fork"):
        raise HeapError(
            f"{gc.get_freeze_count()} objects are frozen by gc.freeze() and this platform "
            "has no os.fork to inspect them without changing the freeze state"
        )
    return _call_in_fork(lambda: fn(_child_view()), timeout)


def call_in_fork(fn: Callable[[], T], *, timeout: float = 60.0) -> T:
    """``fn()`` in a forked child (POSIX only); its result must be picklable plain data.

    For reads that may run the program's code (a callback's ``__eq__``): whatever that
    code does happens in the child.  Raises :class:`HeapError` without ``os.fork``."""
    if not hasattr(os, "fork"):
        raise HeapError("this platform has no os.fork")
    return _call_in_fork(fn, timeout)


def find_instances(
    wanted: Callable[[type], bool],
    describe: Callable[[object], T | None],
    objects: Iterable[object] | None = None,
) -> list[T]:
    """``describe(obj)`` for every object on the whole heap (frozen objects included)
    whose type ``wanted`` accepts; ``None`` results are dropped.  One pass; ``wanted``
    is asked once per type.  With frozen objects it runs in a forked child (see
    :func:`call_with_full_heap`): ``describe`` must return plain, picklable data and
    must not launch device work.  ``objects`` replaces the heap (tests)."""

    def scan(heap: list[object]) -> list[T]:
        # Types by id(): hashing a type runs its metaclass' __hash__ (the program's).
        kinds = dict(zip(map(id, map(type, heap)), map(type, heap), strict=True))
        types = {key for key, tp in kinds.items() if _accepts(wanted, tp)}
        if not types:
            return []
        hits = itertools.compress(heap, map(types.__contains__, map(id, map(type, heap))))
        return [d for d in map(describe, hits) if d is not None]

    if objects is not None:
        return scan(list(objects))
    return call_with_full_heap(lambda view: scan(view.objects))


def _accepts(wanted: Callable[[type], bool], tp: type) -> bool:
    try:
        return bool(wanted(tp))
    except Exception:  # noqa: BLE001 - a metaclass whose __eq__ or __hash__ raises
        return False


def _child_view() -> HeapView:
    before = {id(o) for o in gc.get_objects()}
    gc.unfreeze()
    objects = gc.get_objects()
    frozen = frozenset(i for i in map(id, objects) if i not in before)
    return HeapView(objects=objects, frozen_ids=frozen, in_child=True)


def _call_in_fork(fn: Callable[[], T], timeout: float) -> T:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or odd stream must not stop us
            pass
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when forking a multi-threaded process; the child only
        # reads the heap and exits with os._exit, so the warning does not apply.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, measured through the parent
        os.close(read_fd)
        status = 0
        try:
            payload = pickle.dumps(("ok", fn()), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            status = 1
            payload = pickle.dumps(("error", traceback.format_exc()))
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = _monotonic() + timeout
    try:
        while True:
            left = deadline - _monotonic()
            if left <= 0:
                os.kill(pid, 9)
                raise HeapError(f"the heap walk in a forked child took over {timeout:.0f} s")
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # SIGCHLD set to SIG_IGN: the kernel reaped it already
            pass
    if not chunks:
        raise HeapError("the forked heap-walk child exited without a result")
    kind, value = pickle.loads(b"".join(chunks))
    if kind != "ok":
        raise HeapError(f"the heap walk failed in the forked child:\n{value}")
    result: T = value  # unpickled from the child, which ran fn
    return result

"""The interpreter as memdiag found it is put back around its own work, then the
program's state is put back: replaced builtins, stdlib functions, sys.modules entries,
gc callbacks, trace/profile functions, the recursion limit, the import path."""

from __future__ import annotations

import builtins
import gc
import hashlib
import json
import os
import sys
import threading
import time
import warnings
from typing import Any

from memdiag.check.interpreter import MIN_RECURSION, InterpreterState


def _replaced_len(obj: object) -> int:
    raise RuntimeError("the program's len")


def test_replaced_builtins_and_stdlib_functions_are_real_inside_then_the_programs() -> None:
    state = InterpreterState()
    real_len, real_sleep, real_getattr = builtins.len, time.sleep, builtins.getattr
    builtins.len = _replaced_len
    del builtins.getattr  # type: ignore[attr-defined]
    time.sleep = None  # type: ignore[assignment]
    try:
        with state.restored():
            assert len([1, 2]) == 2
            assert getattr(state, "restored") is not None  # noqa: B009 - deleted, back
            assert time.sleep is real_sleep
        assert builtins.len is _replaced_len
        assert "getattr" not in builtins.__dict__
        assert time.sleep is None
    finally:
        builtins.len, time.sleep = real_len, real_sleep
        builtins.getattr = real_getattr


def test_sys_modules_entries_are_put_back_for_the_block_only() -> None:
    state = InterpreterState()
    saved = sys.modules["json"]
    sys.modules["json"] = None  # type: ignore[assignment]
    try:
        with state.restored():
            import json as again

            assert again is json
        assert sys.modules["json"] is None
    finally:
        sys.modules["json"] = saved


def test_gc_callbacks_hooks_and_recursion_limit_are_lifted_for_the_block() -> None:
    state = InterpreterState()
    calls: list[str] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        calls.append(phase)
        raise RuntimeError("the program's gc callback")

    traced: list[str] = []

    def tracer(frame: Any, event: str, arg: object) -> None:
        traced.append(frame.f_code.co_name)

    def inside() -> None:
        pass

    limit = sys.getrecursionlimit()
    found_trace = sys.gettrace()  # a coverage tool's, if any: it stays
    gc.callbacks.append(callback)
    sys.setrecursionlimit(60)
    sys.settrace(tracer)
    try:
        with state.restored():
            assert sys.gettrace() is found_trace
            inside()
            gc.collect()
            assert calls == []
            assert sys.getrecursionlimit() >= MIN_RECURSION
        assert sys.gettrace() is tracer
        assert "inside" not in traced
        assert sys.getrecursionlimit() == 60
        assert gc.callbacks[-1] is callback
    finally:
        sys.settrace(found_trace)
        sys.setrecursionlimit(limit)
        gc.callbacks.remove(callback)


def test_entering_again_resumes_and_an_error_keeps_memdiags_state() -> None:
    """A signal handler of the program may raise into the first entry: entering again
    puts back the rest.  On an error memdiag's message is written in its own state."""
    state = InterpreterState()
    real_len = builtins.len
    restorer = state.restored()
    builtins.len = _replaced_len
    try:
        restorer.__enter__()
        restorer.__enter__()
        assert builtins.len is real_len
        restorer.__exit__(RuntimeError, RuntimeError("memdiag failed"), None)
        assert builtins.len is real_len  # not the program's: memdiag reports next
    finally:
        builtins.len = real_len


def test_a_lazy_restore_puts_back_the_rest_when_widened() -> None:
    """``restored(lazy=True)``: builtins, sys.modules and the modules of a passing
    check at once; other standard modules (hashlib here) only once the check widens."""
    from memdiag.check.interpreter import widen

    state = InterpreterState()
    real_len, real_sha1, real_getpid = builtins.len, hashlib.sha1, os.getpid
    builtins.len = _replaced_len
    hashlib.sha1 = _replaced_len  # type: ignore[assignment]
    os.getpid = _replaced_len  # type: ignore[assignment]
    try:
        with state.restored(lazy=True):
            assert builtins.len is real_len
            assert os.getpid is real_getpid
            assert hashlib.sha1 is _replaced_len
            widen()
            assert hashlib.sha1 is real_sha1
            widen()  # once is enough
        assert builtins.len is _replaced_len
        assert hashlib.sha1 is _replaced_len
        assert os.getpid is _replaced_len
        widen()  # outside a block: nothing to widen
        assert hashlib.sha1 is _replaced_len
    finally:
        builtins.len, hashlib.sha1, os.getpid = real_len, real_sha1, real_getpid


def test_hooks_a_test_runner_swaps_per_test_are_left_as_found() -> None:
    """pytest records warnings and thread exceptions per test through these hooks: a
    warning raised during the check is the program's to record, not printed."""
    state = InterpreterState()
    real_excepthook, real_impl = threading.excepthook, warnings._showwarnmsg_impl  # type: ignore[attr-defined]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threading.excepthook = _replaced_len  # type: ignore[assignment]
        try:
            with state.restored(), state.restored(lazy=True):
                assert threading.excepthook is _replaced_len
                warnings.warn("inside the check", stacklevel=1)
        finally:
            threading.excepthook = real_excepthook
    assert [str(w.message) for w in caught] == ["inside the check"]
    assert warnings._showwarnmsg_impl is real_impl  # type: ignore[attr-defined]

"""Run a program exactly as ``python script.py`` / ``python -m mod`` / ``python -c code`` would.

One runner serves ``memdiag run`` and the worker agent (``python -m memdiag.agent``).
``sys.argv``, ``sys.path[0]``, the ``__main__`` module's globals (``__file__``,
``__spec__``, ``__loader__``, ``__package__``), ``sys.exit`` codes and text, and
uncaught exceptions (through ``sys.excepthook``, the script's own if it set one)
behave as under the interpreter.  The program's module stays alive after it returns
(as at the end of ``python script.py``), so a check can run while its globals still
hold what they hold; :meth:`ScriptRun.release` restores memdiag's own ``__main__``,
``argv`` and path and drops the namespace.

What the interpreter does that a runner cannot undo is detected instead: a forked
child of the program returns from :func:`run_target` in another process
(:attr:`ScriptRun.forked`), and ``os._exit`` called by the program reaches the
``on_os_exit`` callback (in the process that started the run only) before the
process ends.
"""

from __future__ import annotations

import argparse
import builtins
import importlib.machinery
import importlib.util
import io
import os
import runpy
import select
import stat
import sys
import time
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO

__all__ = [
    "ScriptNotFound",
    "ScriptRun",
    "Target",
    "TargetError",
    "run_script",
    "run_target",
    "split_command_line",
]

TargetKind = Literal["script", "module", "code"]

_getpid = os.getpid
"""Bound at import: a program that replaces ``os.getpid`` is not taken for a fork."""


class TargetError(Exception):
    """The program cannot be started at all (a usage error, not a script failure)."""


class ScriptNotFound(TargetError, FileNotFoundError):
    """The script does not exist (or is a directory without ``__main__.py``)."""


@dataclass(frozen=True)
class Target:
    """What to run: a script path, ``-m module`` or ``-c code``."""

    kind: TargetKind
    value: str

    @classmethod
    def script(cls, path: str | os.PathLike[str]) -> Target:
        return cls("script", os.fspath(path))

    @classmethod
    def module(cls, name: str) -> Target:
        return cls("module", name)

    @classmethod
    def code(cls, text: str) -> Target:
        return cls("code", text)

    @property
    def display(self) -> str:
        """How a user wrote it: ``script.py``, ``-m pkg.mod`` or ``-c '...'`` (shortened)."""
        if self.kind == "module":
            return f"-m {self.value}"
        if self.kind == "code":
            text = " ".join(self.value.split())
            return f"-c {text[:40] + '...' if len(text) > 40 else text!r}"
        return self.value


@dataclass
class ScriptRun:
    target: Target
    pid: int = field(default_factory=_getpid)
    """The process that started the run; a forked child of the program is another."""
    exit_code: int = 0
    failure: str | None = None
    """One line on how the program failed (exception type and message, or exit code)."""
    module: types.ModuleType | None = None
    _saved_main: types.ModuleType | None = field(default=None, repr=False)
    _saved_argv: list[str] | None = field(default=None, repr=False)
    _saved_path0: tuple[str, str] | None = field(default=None, repr=False)
    _restore_os_exit: Callable[[], None] | None = field(default=None, repr=False)
    _saved_excepthook: Any = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.exit_code != 0

    @property
    def forked(self) -> bool:
        """True in a child the program forked: the run (and its check) is not ours."""
        return _getpid() != self.pid

    @property
    def path(self) -> Path:
        """The script's path (``-m``: the module's file; ``-c``: ``-c``)."""
        file = self.module.__dict__.get("__file__") if self.module is not None else None
        return Path(file if isinstance(file, str) else self.target.value)

    def release(self) -> None:
        """Put memdiag's ``__main__``, ``sys.argv``, ``sys.path[0]``, ``sys.excepthook``
        and ``os._exit`` back (after the check)."""
        if self._restore_os_exit is not None:
            self._restore_os_exit()
            self._restore_os_exit = None
        if self._saved_excepthook is not None:  # the program's hook served its purpose
            sys.excepthook = self._saved_excepthook
            self._saved_excepthook = None
        if self._saved_main is not None:
            sys.modules["__main__"] = self._saved_main
            self._saved_main = None
        if self._saved_argv is not None:
            sys.argv = self._saved_argv
            self._saved_argv = None
        if self._saved_path0 is not None:
            ours, theirs = self._saved_path0
            if sys.path and sys.path[0] == ours:
                sys.path[0] = theirs
            self._saved_path0 = None
        self.module = None


def run_script(path: str | os.PathLike[str], args: list[str]) -> ScriptRun:
    """Run ``path`` as ``python path args`` would (see :func:`run_target`)."""
    return run_target(Target.script(path), args)


def run_target(
    target: Target,
    args: list[str],
    *,
    on_os_exit: Callable[[int, str], int] | None = None,
    stderr: Callable[[], TextIO | None] | None = None,
    on_return: Callable[[], object] | None = None,
) -> ScriptRun:
    """Run ``target`` as ``__main__``; never raises for the program's own failures.

    Raises :class:`TargetError` (:class:`ScriptNotFound`) when it cannot start: no
    such file, a directory without ``__main__.py``, no module of that name.

    ``on_os_exit(code, where)``: called when the program calls ``os._exit(code)`` in
    this process (not in its forked children), before the process ends, with every
    frame of the program still alive; ``where`` is the caller's ``file:line``.  It
    returns the exit code the process ends with.
    ``stderr``: where to print the program's traceback or ``sys.exit`` text when its
    own ``sys.stderr`` is gone (``None``, closed, or its file descriptor closed).
    ``on_return()``: called as soon as the program's code returns or raises (before
    anything else of memdiag's runs), e.g. to hold the program's signals; retried
    when the program's signal handler raises into it.
    """
    run = ScriptRun(target=target)
    run._saved_main = sys.modules["__main__"]
    run._saved_argv = sys.argv
    run._saved_excepthook = sys.excepthook
    module = types.ModuleType("__main__")
    try:
        compiled = _prepare(target, args, module, run)
    except BaseException:
        run.release()
        raise
    if compiled is None:  # finding the module ran the package's __init__, which failed
        return run
    sys.modules["__main__"] = module
    run.module = module
    if on_os_exit is not None:
        run._restore_os_exit = _hook_os_exit(run.pid, on_os_exit)
    hooks = (sys.gettrace(), sys.getprofile())
    failure: BaseException | None = None
    try:
        exec(compiled(), module.__dict__)
    except BaseException as exc:  # noqa: BLE001 - the script's failure is reported, not raised
        failure = exc
        del exc
    # Right after the program's code: statements and C calls only until on_return
    # has put the interpreter back.  A trace or profile function the program left
    # would run at every call memdiag makes (and may raise): the ones memdiag found
    # (a coverage tool's) are put back.  A hook or a signal handler of the program
    # that raises into a step (the interpreter unsets a raising hook) makes it run
    # again; a function call of ours here could be interrupted at its first line.
    tries = 0
    while tries < 8:
        tries += 1
        try:
            if sys.getprofile() is not hooks[1]:
                sys.setprofile(hooks[1])
            if sys.gettrace() is not hooks[0]:
                sys.settrace(hooks[0])
            if on_return is not None:
                on_return()
            break
        except _Exception:
            continue
    if isinstance(failure, SystemExit):
        run.exit_code, run.failure = _system_exit(failure, stderr)
    elif failure is not None:
        _record_exception(run, failure, stderr)
    del failure
    return run


_Exception = Exception
"""Bound here: ``except Exception`` would look the name up in the program's builtins."""


# -- preparing the three kinds of target ---------------------------------------------------


def _set_path0(run: ScriptRun, entry: str) -> None:
    """``sys.path[0]`` as the interpreter sets it (memdiag's own entry is put back later)."""
    if sys.path:
        run._saved_path0 = (entry, sys.path[0])
        sys.path[0] = entry
    else:
        sys.path.append(entry)


def _main_globals(module: types.ModuleType, **values: Any) -> None:
    namespace = module.__dict__
    namespace.update({"__builtins__": builtins, "__doc__": None, **values})
    if sys.version_info < (3, 14):  # the interpreter's __main__ starts with one
        namespace["__annotations__"] = {}


_Code = Callable[[], types.CodeType]
"""The program's code, compiled when it runs: a SyntaxError is the program's failure."""


def _prepare(
    target: Target, args: list[str], module: types.ModuleType, run: ScriptRun
) -> _Code | None:
    if target.kind == "code":
        return _source_main(target.value, "<string>", ["-c", *args], module, run)
    if target.kind == "module":
        return _prepare_module(target.value, args, module, run)
    return _prepare_script(target.value, args, module, run)


def _prepare_module(
    name: str, args: list[str], module: types.ModuleType, run: ScriptRun
) -> _Code | None:
    if not name:
        raise TargetError("-m needs a module name")
    sys.argv = ["-m", *args]  # as python has it while the module is looked up
    _set_path0(run, os.getcwd())
    try:
        _, spec, code = _module_details(name)
    except TargetError:
        raise
    except BaseException as exc:  # noqa: BLE001 - a parent package raised on import
        _record_exception(run, exc, None)
        del exc
        return None
    sys.argv = [spec.origin or name, *args]
    _spec_globals(module, spec)
    return lambda: code


def _source_main(
    source: str, name: str, argv: list[str], module: types.ModuleType, run: ScriptRun
) -> _Code:
    """``python -c CODE`` / ``python -``: source without a file, '' first on sys.path."""
    sys.argv = argv
    _set_path0(run, "")
    _main_globals(
        module,
        __loader__=importlib.machinery.BuiltinImporter,
        __package__=None,
        __spec__=None,
    )
    return _compile_later(source, name)


def _spec_globals(module: types.ModuleType, spec: importlib.machinery.ModuleSpec) -> None:
    """``__main__``'s globals for code found through an import spec, as runpy sets them."""
    _main_globals(
        module,
        __file__=spec.origin,
        __cached__=spec.cached,
        __loader__=spec.loader,
        __package__=spec.parent,
        __spec__=spec,
    )


def _module_details(name: str) -> tuple[str, importlib.machinery.ModuleSpec, types.CodeType]:
    """``runpy``'s own lookup: a package runs its ``__main__``, errors as python words them."""
    details: Callable[..., Any] = getattr(runpy, "_get_module_details")  # noqa: B009 - private
    try:
        mod_name, spec, code = details(name, _ModuleNotRunnable)
    except _ModuleNotRunnable as exc:
        raise TargetError(f"-m {name}: {exc}") from None
    return mod_name, spec, code


class _ModuleNotRunnable(ImportError):
    pass


def _prepare_script(value: str, args: list[str], module: types.ModuleType, run: ScriptRun) -> _Code:
    if value == "-":  # python - : the program comes from stdin
        return _source_main(sys.stdin.read(), "<stdin>", ["-", *args], module, run)
    if not value:
        raise ScriptNotFound("script not found: '' (an empty name)")
    path = Path(value)
    if path.is_dir() or (path.is_file() and zipfile.is_zipfile(path)):
        return _prepare_main_of(value, args, module, run, is_dir=path.is_dir())
    if not path.exists():
        raise ScriptNotFound(f"script not found: {value}{_module_hint(value)}")
    try:
        source = _read_script(path, value)
    except OSError as exc:
        raise TargetError(f"cannot read {value}: {exc.strerror or exc}") from None
    file = value if os.path.isabs(value) else os.path.join(os.getcwd(), value)
    sys.argv = [value, *args]
    _set_path0(run, os.path.dirname(os.path.realpath(file)))
    _main_globals(
        module,
        __file__=file,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", file),
        __package__=None,
        __spec__=None,
    )
    if source[:4] == importlib.util.MAGIC_NUMBER:  # python runs .pyc files too
        import marshal

        code = marshal.loads(source[16:])
        if not isinstance(code, types.CodeType):
            raise TargetError(f"{value} is not a Python script or compiled module")
        return lambda: code
    return _compile_later(source, file)


PIPE_WAIT_S = 30.0
"""How long a script that is a pipe or FIFO may keep memdiag waiting for its first bytes."""


def _read_script(path: Path, value: str) -> bytes:
    """The script's bytes.  A pipe (``memdiag run <(...)``) or FIFO is read as Python
    reads it, but a FIFO nobody writes to would block forever: after
    :data:`PIPE_WAIT_S` seconds without a byte it is refused."""
    if stat.S_ISREG(path.stat().st_mode):
        return path.read_bytes()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        chunks: list[bytes] = []
        deadline = time.monotonic() + PIPE_WAIT_S
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TargetError(
                    f"{value} is not a regular file and nothing came from it in "
                    f"{PIPE_WAIT_S:g} s (a FIFO nobody writes to?)"
                )
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                if chunks or _anonymous_pipe(fd):
                    # EOF: every writer closed (an anonymous pipe, as from ``<(...)``,
                    # gets no writer later: one that wrote nothing is an empty script).
                    return b"".join(chunks)
                if time.monotonic() >= deadline:
                    raise TargetError(
                        f"{value} is not a regular file and nothing came from it in "
                        f"{PIPE_WAIT_S:g} s (a FIFO nobody writes to?)"
                    )
                # No writer has opened it yet (EOF on an unopened FIFO): wait for one.
                time.sleep(0.05)
                continue
            chunks.append(chunk)
            deadline = time.monotonic() + PIPE_WAIT_S
    finally:
        os.close(fd)


def _anonymous_pipe(fd: int) -> bool:
    """``fd`` is a pipe with no name (``pipe:[inode]``), not a FIFO on a file system."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:
        return False


def _compile_later(source: bytes | str, file: str) -> _Code:
    """Compiled when the program runs: a SyntaxError is the program's failure, as in python."""
    return lambda: compile(source, file, "exec", dont_inherit=True)


def _prepare_main_of(
    value: str, args: list[str], module: types.ModuleType, run: ScriptRun, *, is_dir: bool
) -> _Code:
    """``python DIR`` / ``python app.zip``: run its ``__main__.py`` with it on ``sys.path``."""
    entry = os.path.abspath(value)
    details: Callable[..., Any] = getattr(runpy, "_get_main_module_details")  # noqa: B009 - private
    sys.argv = [value, *args]
    _set_path0(run, entry)
    try:
        _, spec, code = details(_ModuleNotRunnable)
    except _ModuleNotRunnable:
        what = "is a directory" if is_dir else "is a zip file"
        raise ScriptNotFound(
            f"{value} {what} with no __main__.py; give a script, or -m package"
        ) from None
    _spec_globals(module, spec)
    return lambda: code


def _module_hint(value: str) -> str:
    """``memdiag run pkg.mod`` where ``-m pkg.mod`` was meant."""
    parts = value.split(".")
    if os.sep in value or parts[-1] in ("py", "pyc") or not all(p.isidentifier() for p in parts):
        return ""
    try:
        search = [os.getcwd(), *sys.path[1:]]  # where -m would look
        found = importlib.machinery.PathFinder.find_spec(parts[0], search) is not None
    except (ImportError, ValueError):
        found = False
    return f" (to run the module {value}, give -m {value})" if found else ""


# -- how the program ended -----------------------------------------------------------------


def _usable(stream: Any) -> bool:
    if stream is None or getattr(stream, "closed", False):
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return True  # an in-memory stream: as good as any
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _error_stream(fallback: Callable[[], TextIO | None] | None) -> TextIO | None:
    """The program's ``sys.stderr`` if it can still be written, else ``fallback``."""
    if _usable(sys.stderr):
        return sys.stderr
    return fallback() if fallback is not None else None


def _write_error(text: str, fallback: Callable[[], TextIO | None] | None) -> None:
    stream = _error_stream(fallback)
    try:
        if stream is not None:
            stream.write(text)
            stream.flush()
    except (OSError, ValueError):
        if fallback is not None and stream is not fallback():
            other = fallback()
            if other is not None:
                other.write(text)
                other.flush()


def _system_exit(
    exc: SystemExit, fallback: Callable[[], TextIO | None] | None
) -> tuple[int, str | None]:
    """The exit code python would give, printing ``sys.exit("text")`` text as it does."""
    code = exc.code
    if code is None:
        return 0, None
    if isinstance(code, int):
        return int(code), (f"the script called sys.exit({code})" if code else None)
    try:
        text = str(code)
    except Exception:  # noqa: BLE001 - a hostile object: python prints nothing either
        text = f"<unprintable {type(code).__name__} object>"
    _write_error(text + "\n", fallback)
    return 1, f"the script called sys.exit({text[:80]!r})"


def _record_exception(
    run: ScriptRun, exc: BaseException, fallback: Callable[[], TextIO | None] | None
) -> None:
    run.exit_code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a hostile __str__
        message = "<exception str() failed>"
    run.failure = f"the script raised {type(exc).__name__}: {message[:200]}"
    # Hide memdiag's own frames: the report starts at the script, as python's would.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    exc.__traceback__ = tb
    _call_excepthook(exc, fallback)


def _call_excepthook(exc: BaseException, fallback: Callable[[], TextIO | None] | None) -> None:
    """What the interpreter does with an uncaught exception: ``sys.excepthook`` (the
    program's own when it set one); if that raises, both errors are printed."""
    hook = getattr(sys, "excepthook", None)
    if hook is None:
        _write_error("sys.excepthook is missing\n", fallback)
        hook = sys.__excepthook__
    if hook is sys.__excepthook__ and not _usable(sys.stderr):
        _print_exception(exc, fallback)
        return
    try:
        hook(type(exc), exc, exc.__traceback__)
    except BaseException as hook_error:  # noqa: BLE001 - as python reports it
        import traceback

        text = "Error in sys.excepthook:\n" + "".join(traceback.format_exception(hook_error))
        text += "\nOriginal exception was:\n" + "".join(traceback.format_exception(exc))
        _write_error(text, fallback)


def _print_exception(exc: BaseException, fallback: Callable[[], TextIO | None] | None) -> None:
    import traceback

    _write_error("".join(traceback.format_exception(exc)), fallback)


# -- os._exit ------------------------------------------------------------------------------


def _hook_os_exit(pid: int, on_os_exit: Callable[[int, str], int]) -> Callable[[], None]:
    """Route ``os._exit`` of process ``pid`` through ``on_os_exit``; returns the undo."""
    real_exit = os._exit
    busy: list[bool] = []

    def _exit(status: int) -> NoReturn:
        if _getpid() != pid or busy:  # a forked child, or os._exit during the check
            real_exit(status)
        busy.append(True)
        caller = sys._getframe(1)
        where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        del caller
        try:
            final = on_os_exit(status, where)
        except BaseException:  # noqa: BLE001 - the process ends either way
            final = 4
        real_exit(final)

    os._exit = _exit

    def restore() -> None:
        if os._exit is _exit:
            os._exit = real_exit

    return restore


# -- the command line: options, then the program, then the program's own arguments ---------


def split_command_line(
    tokens: list[str], parser: argparse.ArgumentParser
) -> tuple[list[str], Target | None, list[str]]:
    """Split ``[options] (script | -m module | -c code) [args...]`` as python does.

    The options are ``parser``'s; everything after the script (or after ``-m module``
    / ``-c code``, which end the options as they do for python) belongs to the program
    verbatim, ``--`` included.  ``--`` before the program ends memdiag's options.
    Returns (memdiag's option tokens, the target or ``None``, the program's args).
    """
    actions = parser._option_string_actions
    long_names = [name for name in actions if name.startswith("--")]
    options: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            if i + 1 < len(tokens):
                return options, Target.script(tokens[i + 1]), tokens[i + 2 :]
            return options, None, []
        if token.startswith("--"):
            name, eq, _ = token.partition("=")
            action = actions.get(name)
            if action is None and parser.allow_abbrev:
                matches = [n for n in long_names if n.startswith(name)]
                action = actions[matches[0]] if len(matches) == 1 else None
            options.append(token)
            if action is not None and action.nargs != 0 and not eq and i + 1 < len(tokens):
                options.append(tokens[i + 1])
                i += 1
            i += 1
            continue
        if token.startswith("-") and len(token) > 1:
            flags = token[1:]
            for j, char in enumerate(flags):
                rest = flags[j + 1 :]
                if char in "mc":
                    value = rest if rest else (tokens[i + 1] if i + 1 < len(tokens) else None)
                    after = tokens[i + 1 :] if rest else tokens[i + 2 :]
                    if value is None:
                        options.append(f"-{char}")  # argparse says: expected one argument
                        return options, None, []
                    kind = Target.module if char == "m" else Target.code
                    return options, kind(value), after
                action = actions.get(f"-{char}")
                if action is not None and action.nargs != 0:
                    options.append(f"-{char}{rest}" if rest else f"-{char}")
                    if not rest and i + 1 < len(tokens):
                        options.append(tokens[i + 1])
                        i += 1
                    break
                options.append(f"-{char}")  # a flag (-v), or unknown: argparse says so
            i += 1
            continue
        return options, Target.script(token), tokens[i + 1 :]
    return options, None, []

"""Run a script exactly as ``python script.py args`` would, keeping ``__main__`` alive.

``sys.argv``, ``sys.path[0]``, ``__main__``, ``__file__``, ``sys.exit`` codes and
uncaught exceptions behave as under the interpreter.  The script's module stays
alive after it returns (as at the end of ``python script.py``), so a check can run
while its globals still hold what they hold; :meth:`ScriptRun.release` restores
memdiag's own ``__main__``, ``argv`` and path and drops the namespace.
"""

from __future__ import annotations

import os
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ScriptNotFound", "ScriptRun", "run_script"]


class ScriptNotFound(FileNotFoundError):
    pass


@dataclass
class ScriptRun:
    path: Path
    exit_code: int = 0
    failure: str | None = None
    """One line on how the script failed (exception type and message, or exit code)."""
    module: types.ModuleType | None = None
    _saved_main: types.ModuleType | None = field(default=None, repr=False)
    _saved_argv: list[str] | None = field(default=None, repr=False)
    _saved_path0: str | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.exit_code != 0

    def release(self) -> None:
        """Put memdiag's ``__main__``, ``sys.argv`` and ``sys.path`` back; drop the script."""
        if self._saved_main is not None:
            sys.modules["__main__"] = self._saved_main
            self._saved_main = None
        if self._saved_argv is not None:
            sys.argv = self._saved_argv
            self._saved_argv = None
        if self._saved_path0 is not None:
            if sys.path and sys.path[0] == str(self.path.parent):
                sys.path[0] = self._saved_path0
            self._saved_path0 = None
        self.module = None


def _exit_code(exc: SystemExit) -> tuple[int, str | None]:
    code = exc.code
    if code is None:
        return 0, None
    if isinstance(code, int):
        return code, (f"the script called sys.exit({code})" if code else None)
    print(code, file=sys.stderr)  # as the interpreter does for sys.exit("message")
    return 1, f"the script called sys.exit({str(code)[:80]!r})"


def run_script(path: str | os.PathLike[str], args: list[str]) -> ScriptRun:
    """Run ``path`` as ``__main__``; never raises for the script's own failures."""
    script = Path(path)
    if not script.is_file():
        raise ScriptNotFound(f"script not found: {script}")
    try:
        source = script.read_bytes()
    except OSError as exc:
        raise ScriptNotFound(f"cannot read {script}: {exc.strerror}") from None
    run = ScriptRun(path=script.resolve())
    module = types.ModuleType("__main__")
    module.__dict__.update(
        {"__file__": str(script), "__builtins__": __builtins__, "__spec__": None}
    )
    run._saved_main = sys.modules["__main__"]
    run._saved_argv = sys.argv
    sys.argv = [str(script), *args]
    run._saved_path0 = sys.path[0] if sys.path else ""
    if sys.path:
        sys.path[0] = str(run.path.parent)
    else:
        sys.path.append(str(run.path.parent))
    sys.modules["__main__"] = module
    run.module = module
    try:
        code = compile(source, str(script), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except SystemExit as exc:
        run.exit_code, run.failure = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - the script's failure is reported, not raised
        run.exit_code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        run.failure = f"the script raised {type(exc).__name__}: {str(exc)[:200]}"
        _print_script_traceback(exc)
        # Like the interpreter after printing, keep nothing of the failed frames alive:
        # the traceback must not hold the script's locals during the check.
        exc.__traceback__ = None
        del exc
    return run


def _print_script_traceback(exc: BaseException) -> None:
    tb = exc.__traceback__
    # Hide memdiag's own frames: the report starts at the script, as python's would.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    print("Traceback (most recent call last):", file=sys.stderr) if tb is not None else None
    if tb is not None:
        traceback.print_tb(tb, file=sys.stderr)
    print("".join(traceback.format_exception_only(type(exc), exc)), end="", file=sys.stderr)

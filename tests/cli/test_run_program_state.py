"""`memdiag run` against what programs do to their own process: cwd, stdio, excepthook,
os._exit, fork; report files through symlinks.  Each class with its examples as cases,
real programs through the real command (a subprocess where the program ends or forks
the process)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from memdiag.cli import main

HOLD = "import torch\nKEEP = torch.zeros(1024, 1024)  # 4 MiB held by a global\n"


def _memdiag(cwd: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MEMDIAG_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "memdiag", "run", "--device", "cpu", "--settle", "0", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# -- a directory as the script ---------------------------------------------------------------


def test_a_directory_is_named_as_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "app").mkdir()
    assert main(["run", str(tmp_path / "app")]) == 2
    err = capsys.readouterr().err
    assert "is a directory with no __main__.py; give a script, or -m package" in err
    assert "not found" not in err
    (tmp_path / "app" / "__main__.py").write_text("import sys\nsys.exit(3)\n")
    assert main(["run", "--device", "cpu", "--settle", "0", str(tmp_path / "app")]) == 3


# -- sys.excepthook, sys.exit text, exceptions as python prints them ---------------------------

HOOK = """
import sys
def hook(kind, value, tb):
    print("HOOK", kind.__name__, value, tb.tb_frame.f_code.co_filename, file=sys.stderr)
sys.excepthook = hook
{body}
"""


@pytest.mark.parametrize(
    ("body", "expected", "code"),
    [
        ("raise ValueError('x [/]')", "HOOK ValueError x [/] ", 3),
        ("import torch\nKEEP = torch.zeros(1024, 1024)\nraise KeyError('k')", "HOOK KeyError", 1),
    ],
)
def test_the_scripts_excepthook_is_called(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str, code: int
) -> None:
    script = tmp_path / "hooked.py"
    script.write_text(HOOK.format(body=body))
    assert main(["run", "--device", "cpu", "--settle", "0", str(script)]) == code
    err = capsys.readouterr().err
    assert f"{expected}" in err and str(script) in err  # the tb starts at the script
    assert "Traceback" not in err  # the hook replaced python's printing


def test_a_raising_excepthook_prints_both_errors_as_python_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "badhook.py"
    script.write_text(
        "import sys\ndef hook(*a): raise OSError('hook broke')\nsys.excepthook = hook\n"
        "raise ValueError('original')\n"
    )
    assert main(["run", "--device", "cpu", "--settle", "0", str(script)]) == 3
    err = capsys.readouterr().err
    assert "Error in sys.excepthook:" in err and "OSError: hook broke" in err
    assert "Original exception was:" in err and "ValueError: original" in err


def test_chained_exceptions_print_as_python_prints_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = (
        "def f():\n    try:\n        {}['k']\n    except KeyError as e:\n"
        "        raise ValueError('outer') from e\nf()\n"
    )
    script = tmp_path / "chained.py"
    script.write_text(body)
    python = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert main(["run", "--device", "cpu", "--settle", "0", str(script)]) == 3
    err = capsys.readouterr().err
    assert python.stderr in err  # byte for byte what python printed


@pytest.mark.parametrize(
    ("code_text", "printed"),
    [("'bye [bold]now[/]'", "bye [bold]now[/]"), ("['a', 1]", "['a', 1]"), ("3.5", "3.5")],
)
def test_sys_exit_with_an_object_prints_it_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], code_text: str, printed: str
) -> None:
    assert main(["run", "--device", "cpu", "--settle", "0", "-c", f"raise SystemExit({code_text})"])
    err = capsys.readouterr().err
    assert err.startswith(printed + "\n")
    assert "(exit code 1)" in err
    assert main(["run", "--device", "cpu", "--settle", "0", "-c", HOLD + f"exit({code_text})"]) == 1


# -- report paths: fixed at start, written through symlinks ------------------------------------


@pytest.mark.parametrize("option", ["--json", "--html", "--junit"])
def test_report_paths_are_relative_to_where_memdiag_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    code = f"import os\nos.chdir({str(tmp_path / 'elsewhere')!r})\n"
    assert main(["run", "--device", "cpu", "--settle", "0", option, "out.rep", "-c", code]) == 0
    assert (tmp_path / "out.rep").stat().st_size > 0
    assert not (tmp_path / "elsewhere" / "out.rep").exists()


def test_a_report_goes_through_a_symlink_to_its_target(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    real = tmp_path / "reports" / "real.json"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    dangling = tmp_path / "next.json"
    dangling.symlink_to(tmp_path / "reports" / "new.json")
    for out in (link, dangling):
        assert main(["run", "--device", "cpu", "--settle", "0", "--json", str(out), "-c", "1"]) == 0
    assert link.is_symlink() and dangling.is_symlink()
    assert json.loads(real.read_text())["leaked"] is False
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the file's mode is kept
    assert json.loads((tmp_path / "reports" / "new.json").read_text())["leaked"] is False
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["new.json", "real.json"]


def test_a_report_to_a_device_file_is_written_in_place(tmp_path: Path) -> None:
    proc = _memdiag(tmp_path, "--json", "/dev/stdout", "-c", "print('program output')")
    assert proc.returncode == 0, proc.stderr
    report = proc.stdout[proc.stdout.index("{") :]
    assert json.loads(report)["leaked"] is False


# -- stdio closed or replaced by the program -----------------------------------------------------

STDIO_CASES = {
    "os.close(2)": "import os\nos.close(2)\n",
    "os.close(1) and os.close(2)": "import os\nprint('out')\nos.close(1)\nos.close(2)\n",
    "sys.stderr = None": "import sys\nsys.stderr = None\n",
    "sys.stdout and sys.stderr closed": "import sys\nsys.stdout.close()\nsys.stderr.close()\n",
    "sys.stderr replaced": "import io, sys\nsys.stderr = io.StringIO()\n",
    "fd 2 to /dev/null": "import os\nos.dup2(os.open(os.devnull, os.O_WRONLY), 2)\n",
}


@pytest.mark.parametrize(
    ("case", "leak"),
    [(case, False) for case in sorted(STDIO_CASES)]
    + [("os.close(1) and os.close(2)", True), ("sys.stderr = None", True)],
)
def test_the_report_survives_the_programs_stdio(tmp_path: Path, case: str, leak: bool) -> None:
    code, verdict = (1, "LEAK") if leak else (0, "OK")
    proc = _memdiag(tmp_path, "-c", (HOLD if leak else "") + STDIO_CASES[case])
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert f"{verdict}: " in proc.stderr
    assert "internal error" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_sys_exit_text_with_stderr_gone_still_reaches_the_terminal(tmp_path: Path) -> None:
    proc = _memdiag(tmp_path, "-c", "import sys\nsys.stderr = None\nsys.exit('the reason')")
    assert proc.returncode == 3
    assert "the reason\n" in proc.stderr and "(exit code 1)" in proc.stderr


# -- os._exit ------------------------------------------------------------------------------------

OS_EXIT = """
import os, torch
{hold}
def shutdown():
    local = torch.zeros(512, 1024)
    os._exit({code})
shutdown()
"""


@pytest.mark.parametrize(
    ("hold", "code", "expected"), [(HOLD, 0, 1), ("", 0, 1), ("", 5, 1), ("KEEP = None", 7, 1)]
)
def test_os_exit_is_checked_at_the_call_and_says_so(
    tmp_path: Path, hold: str, code: int, expected: int
) -> None:
    (tmp_path / "hard.py").write_text(OS_EXIT.format(hold=hold, code=code))
    proc = _memdiag(tmp_path, "--json", "out.json", "hard.py")
    # the frame's local is alive at os._exit: it is held memory, reported as such
    assert proc.returncode == expected, proc.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["context"]["script_exit_code"] == code and data["leaked"] is True
    line = 1 + OS_EXIT.format(hold=hold, code=code).split("\n").index(f"    os._exit({code})")
    (notice,) = [n for n in data["notices"] if "os._exit" in n]
    assert f"the script called os._exit({code}) at {tmp_path / 'hard.py'}:{line}" in notice
    assert "nothing after it can be checked" in notice
    text = " ".join(proc.stderr.split())  # as one line: rich wraps at 80 columns
    assert "os._exit" in text and "local 'local'" in text


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (9, 3)])
def test_os_exit_with_nothing_held_is_clean_but_never_silent(
    tmp_path: Path, code: int, expected: int
) -> None:
    proc = _memdiag(tmp_path, "-c", f"import os\nos._exit({code})")
    assert proc.returncode == expected
    assert f"os._exit({code})" in proc.stderr and "OK: " in proc.stderr


# -- fork ---------------------------------------------------------------------------------------

FORKS = """
import multiprocessing as mp, os, sys, torch
KEEP = []
def work():
    KEEP.append(torch.zeros(1024, 1024))
def parent(pid):
    _, status = os.waitpid(pid, 0)
    print("child status", os.waitstatus_to_exitcode(status), flush=True)
    p = mp.get_context("fork").Process(target=work)
    p.start(); p.join()
    print("worker exitcode", p.exitcode, flush=True)
pid = os.fork()
if pid == 0:
    KEEP.append(torch.zeros(1024, 1024))  # the child ends by falling off the script
    {child_end}
else:
    parent(pid)
"""


@pytest.mark.parametrize(
    ("child_end", "child_status"),
    [("pass", 0), ("sys.exit(6)", 6), ("raise ValueError('child')", 1)],
)
def test_a_forked_child_never_runs_a_check(
    tmp_path: Path, child_end: str, child_status: int
) -> None:
    (tmp_path / "forks.py").write_text(FORKS.format(child_end=child_end))
    proc = _memdiag(tmp_path, "--json", "out.json", "forks.py")
    assert proc.returncode == 0, proc.stderr
    assert f"child status {child_status}" in proc.stdout  # python's own exit for the child
    assert "worker exitcode 0" in proc.stdout
    assert proc.stderr.count("memory by phase") == 1  # one report: the parent's
    assert "LEAK" not in proc.stderr
    assert json.loads((tmp_path / "out.json").read_text())["context"]["pid"] != 0


# -- what the program left of the interpreter ---------------------------------------------------

LEFT_BEHIND = """
import atexit, builtins, gc, os, signal, sys, threading, time
{hold}
def seen_at_exit():
    # the program's atexit handlers run in the interpreter the program left
    with builtins.__dict__["_real_open"]("atexit.txt", "w") as out:
        out.write(f"{{(builtins.len is None, time.sleep is None, sys.modules['json'])!r}}")
builtins._real_open = builtins.open
atexit.register(seen_at_exit)
ARMED = False  # armed by the last line: the hooks raise from then on, outside this file
def hook(frame, event, arg):
    if ARMED and frame.f_code.co_filename != __file__:
        raise RuntimeError("the program's hook")
def raising(*args):
    if ARMED:
        raise RuntimeError("the program's callback")
class Stream:
    def write(self, text): raise OSError("write")
    def flush(self): raise OSError("flush")
gc.callbacks.append(raising)
signal.signal(signal.SIGALRM, raising)
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.01)  # keeps firing after the script ends
os.getpid = lambda: 1  # not a forked child for that
for name in ("len", "print", "isinstance", "getattr", "repr", "sorted", "open", "iter"):
    setattr(builtins, name, None)
time.sleep = time.monotonic = None
sys.modules["json"] = None
sys.setrecursionlimit(50)
threading.settrace(hook)
sys.setprofile(hook)
sys.settrace(hook)
sys.stdout = Stream()
ARMED = True
"""


@pytest.mark.parametrize("leak", [True, False])
def test_what_the_program_left_of_the_interpreter_does_not_reach_memdiag(
    tmp_path: Path, leak: bool
) -> None:
    """Replaced builtins and stdlib functions, sys.modules["json"] = None, a recursion
    limit of 50, gc callbacks and trace/profile hooks that raise, a raising interval
    timer, a replaced os.getpid, a stdout whose every call raises: the verdict, the
    report and the exit code are memdiag's, and the program's atexit handler still
    sees its own interpreter."""
    script = tmp_path / "left.py"
    script.write_text(LEFT_BEHIND.format(hold=HOLD if leak else "import torch"))
    proc = _memdiag(tmp_path, "--json", "out.json", "left.py")
    assert proc.returncode == (1 if leak else 0), proc.stderr
    assert "internal error" not in proc.stderr
    # tracebacks at interpreter exit are the program's (torch's own atexit code calls
    # the builtins it replaced), as under python; none goes through memdiag
    assert f"{os.sep}memdiag{os.sep}" not in proc.stderr
    verdict = "LEAK: 4.0 MiB leaked" if leak else "OK: memory within tolerance: cpu"
    assert verdict in proc.stderr
    assert "SIGALRM arrived after the script ended; it was held" in proc.stderr
    assert json.loads((tmp_path / "out.json").read_text())["leaked"] is leak
    assert (tmp_path / "atexit.txt").read_text() == "(True, True, None)"

"""`memdiag run -m` / `-c` / `script.py` / `--version`: python's own semantics, memdiag's
exit codes.

What the program sees (sys.argv, sys.path[0], __main__'s globals) is compared with
what the real interpreter gives the same program on the same command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from itertools import count
from pathlib import Path

import pytest

from memdiag.cli import main

PROBE = """
import json, os, sys
g = globals()
json.dump(
    {
        "argv": sys.argv,
        "path0": sys.path[0],
        "name": __name__,
        "keys": sorted(k for k in g if k.startswith("__")),
        "file": g.get("__file__"),
        "spec": None if __spec__ is None else __spec__.name,
        "package": __package__,
        "loader": getattr(__loader__, "__name__", type(__loader__).__name__),
        "main_is_me": sys.modules["__main__"].__dict__ is g,
    },
    open(os.environ["PROBE_OUT"], "w"),
)
"""
_names = count()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cwd with a script, a package with a module and a __main__, and a probe file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROBE_OUT", str(tmp_path / "probe.json"))
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def _package(root: Path, body: str = PROBE) -> str:
    """A fresh package name each time: in-process runs import it into sys.modules."""
    name = f"mdpkg{next(_names)}_{os.getpid()}"
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "mod.py").write_text(body)
    (root / name / "__main__.py").write_text(body)
    return name


def _probe(root: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((root / "probe.json").read_text())
    (root / "probe.json").unlink()
    return data


def _python(root: Path, *argv: str) -> dict[str, object]:
    subprocess.run([sys.executable, *argv], cwd=root, check=True, timeout=60)
    return _probe(root)


def _memdiag(root: Path, *argv: str) -> dict[str, object]:
    assert main(["run", "--device", "cpu", "--settle", "0", *argv]) == 0
    return _probe(root)


CASES: dict[str, Callable[[Path], list[str]]] = {
    "script": lambda root: ["probe.py", "a", "--", "-x"],
    "script by absolute path": lambda root: [str(root / "probe.py"), "--flag"],
    "-m module": lambda root: ["-m", f"{_package(root)}.mod", "--", "b"],
    "-m package": lambda root: ["-m", _package(root), "c"],
    "-mmodule (attached)": lambda root: [f"-m{_package(root)}.mod", "d"],
    "-c code": lambda root: ["-c", PROBE, "--", "e"],
    "directory with __main__.py": lambda root: [Path(_package(root)).name, "f"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_program_sees_what_python_gives_it(project: Path, case: str) -> None:
    argv = CASES[case](project)
    expected = _python(project, *argv)
    seen = _memdiag(project, *argv)
    assert seen == expected
    assert seen["name"] == "__main__" and seen["main_is_me"] is True


def test_dash_dash_after_the_script_is_the_scripts(project: Path) -> None:
    seen = _memdiag(project, "probe.py", "--", "x")
    assert seen["argv"] == ["probe.py", "--", "x"]
    # before the script, `--` ends memdiag's options
    seen = _memdiag(project, "--", "probe.py", "--verbose")
    assert seen["argv"] == ["probe.py", "--verbose"]


def test_options_after_the_target_are_the_programs(project: Path) -> None:
    seen = _memdiag(project, "-c", PROBE, "--json", "x", "-v", "-m", "y")
    assert seen["argv"] == ["-c", "--json", "x", "-v", "-m", "y"]
    assert not (project / "x").exists()


LEAK = "import torch\nKEEP = torch.zeros(1024, 1024)\n"
RAISE = "import torch\nx = torch.zeros(10)\nraise ValueError('boom')\n"
EXIT_TEXT = "import sys\nsys.exit('bye [/] now')\n"
EXIT_2 = "import sys\nsys.exit(2)\n"
EXIT_0 = "import sys\nsys.exit(0)\n"
LEAK_AND_RAISE = LEAK + "raise RuntimeError('after leaking')\n"

OUTCOMES = [
    ("clean", "import torch\nx = torch.zeros(1024)\ndel x\n", 0),
    ("leak", LEAK, 1),
    ("exception", RAISE, 3),
    ("sys.exit(text)", EXIT_TEXT, 3),
    ("sys.exit(2)", EXIT_2, 3),
    ("sys.exit(0)", EXIT_0, 0),
    ("leak and exception", LEAK_AND_RAISE, 1),
]


def _target(root: Path, kind: str, body: str) -> list[str]:
    if kind == "script":
        (root / "prog.py").write_text(body)
        return ["prog.py"]
    if kind == "-m":
        return ["-m", f"{_package(root, body)}.mod"]
    return ["-c", body]


@pytest.mark.parametrize("kind", ["script", "-m", "-c"])
@pytest.mark.parametrize(("outcome", "body", "code"), OUTCOMES, ids=[o[0] for o in OUTCOMES])
def test_exit_codes(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    outcome: str,
    body: str,
    code: int,
) -> None:
    assert main(["run", "--device", "cpu", "--settle", "0", *_target(project, kind, body)]) == code
    err = capsys.readouterr().err
    if outcome == "exception":
        assert "ValueError: boom" in err and "workers/runner.py" not in err
        assert "script failed: the script raised ValueError: boom (exit code 1)" in err
    if outcome == "sys.exit(text)":
        assert "bye [/] now\n" in err  # printed as python prints it, never as markup
        assert "(exit code 1)" in err
    if outcome == "sys.exit(2)":
        assert "script failed: the script called sys.exit(2) (exit code 2)" in err
    assert "Traceback" not in err or outcome in ("exception", "leak and exception")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.py"], "script not found: missing.py"),
        (["-m", "no_such_module_xyz"], "-m no_such_module_xyz: No module named no_such_module_xyz"),
        (["-m"], "argument -m: expected one argument"),
        (["-c"], "argument -c: expected one argument"),
        ([], "give a script, -m module or -c code"),
        (["."], "is a directory with no __main__.py; give a script, or -m package"),
        (["--settle", "soon", "x.py"], "--settle 'soon' is not a number of seconds"),
        (["--no-such-option", "x.py"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["run", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("memdiag: ")


def test_a_package_without_main_says_what_python_says(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _package(project)
    (project / name / "__main__.py").unlink()
    assert main(["run", "--device", "cpu", "-m", name]) == 2
    assert f"'{name}' is a package and cannot be directly executed" in capsys.readouterr().err


def test_a_module_name_given_as_a_script_suggests_dash_m(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _package(project)
    assert main(["run", "--device", "cpu", f"{name}.mod"]) == 2
    assert f"give -m {name}.mod" in capsys.readouterr().err


@pytest.mark.parametrize(
    "init", ["import no_such_dependency_xyz", "raise RuntimeError('broken init')"]
)
def test_a_failing_parent_package_is_the_programs_failure(
    project: Path, capsys: pytest.CaptureFixture[str], init: str
) -> None:
    """Its __init__ ran and raised: the program failed (3), it is not a usage error."""
    name = _package(project)
    (project / name / "__init__.py").write_text(init + "\n")
    assert main(["run", "--device", "cpu", "--settle", "0", "-m", f"{name}.mod"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "(exit code 1)" in err
    assert ("no_such_dependency_xyz" if "import" in init else "RuntimeError: broken init") in err


@pytest.mark.parametrize("kind", ["-m", "-c"])
def test_memdiags_own_failure_exits_4_without_a_traceback(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    from memdiag.check.tracker import Tracker

    def broken_check(self: Tracker) -> None:
        raise RuntimeError("a bug in memdiag")

    monkeypatch.setattr(Tracker, "check", broken_check)  # wiring: an internal failure
    monkeypatch.delenv("MEMDIAG_DEBUG", raising=False)
    assert main(["run", "--device", "cpu", *_target(project, kind, "x = 1\n")]) == 4
    err = capsys.readouterr().err
    assert "memdiag: internal error" in err and "RuntimeError: a bug in memdiag" in err
    assert "Traceback" not in err and "MEMDIAG_DEBUG=1 shows the traceback" in err
    monkeypatch.setenv("MEMDIAG_DEBUG", "1")
    assert main(["run", "--device", "cpu", *_target(project, kind, "x = 1\n")]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "broken_check" in err


def test_the_programs_main_is_released_after_the_check(project: Path) -> None:
    saved_main, saved_argv, saved_path0 = sys.modules["__main__"], sys.argv, sys.path[0]
    main(["run", "--device", "cpu", "--settle", "0", "-c", LEAK])
    assert sys.modules["__main__"] is saved_main and sys.argv is saved_argv
    assert sys.path[0] == saved_path0
    assert "KEEP" not in sys.modules["__main__"].__dict__


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"memdiag {version('memdiag')}\n"


def test_real_command_line_with_m_c_and_version(project: Path) -> None:
    """The installed entry point, in fresh processes, as a user types it."""
    name = _package(project, LEAK)
    runs = {
        "-m": ([sys.executable, "-m", "memdiag", "run", "-m", f"{name}.mod"], 1),
        "-c": ([sys.executable, "-m", "memdiag", "run", "-c", "import sys; sys.exit(7)"], 3),
        "--version": ([sys.executable, "-m", "memdiag", "--version"], 0),
    }
    for label, (argv, code) in runs.items():
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=project)
        assert proc.returncode == code, (label, proc.stderr)
        assert "Traceback" not in proc.stderr
        if label == "-m":
            assert "__main__.KEEP" in proc.stderr

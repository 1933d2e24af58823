"""The architecture shows in the folders, and the imports keep to it.

Each subpackage of memdiag is a floor; a module imports only from its own subpackage
or from lower floors (never back up), and no modules import each other in a circle.
Importing a value type does not import the tracker.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "memdiag"

FLOORS = {
    "values": 1,
    "heap": 2,
    "processes": 2,
    "report": 2,
    "retainers": 3,
    "backends": 3,
    "workers": 3,
    "check": 4,
    "cli": 5,
    "agent": 5,
    "__init__": 5,
    "__main__": 6,
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _room(module: str) -> str:
    """``memdiag.check.tracker`` -> ``check``; ``memdiag`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Every memdiag name the module imports, at its top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("memdiag"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "memdiag" or node.module.startswith("memdiag."):
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported name lives in (``memdiag.x.y.Name`` -> ``memdiag.x.y``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_every_subpackage_has_a_floor() -> None:
    rooms = {_room(m) for m in _modules()}
    assert rooms <= set(FLOORS), rooms - set(FLOORS)
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", "agent"}, top


def test_no_import_runs_back_up_or_sideways() -> None:
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        room = _room(module)
        for name in _imports(path):
            target = _resolve(name, modules)
            if target is None:
                continue
            other = _room(target)
            if other != room and FLOORS[other] >= FLOORS[room]:
                wrong.append(f"{module} (floor {FLOORS[room]}) -> {target} (floor {FLOORS[other]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    """Function-local imports count too: one that only hides a circle is a circle."""
    modules = _modules()
    graph = {
        module: {
            target
            for name in _imports(path)
            if (target := _resolve(name, modules)) is not None and target != module
        }
        for module, path in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_importing_a_value_type_does_not_import_the_tracker() -> None:
    code = (
        "import sys\n"
        "from memdiag import Finding, format_bytes\n"
        "import memdiag.values.result\n"
        "assert Finding.__module__ == 'memdiag.values.findings'\n"
        "assert format_bytes(1024) == '1.0 KiB', format_bytes(1024)\n"
        "print(sorted(m for m in sys.modules if m.startswith('memdiag.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = done.stdout
    assert "memdiag.values.findings" in loaded
    for heavy in ("memdiag.check", "memdiag.backends", "memdiag.retainers", "memdiag.heap"):
        assert f"'{heavy}" not in loaded, loaded


def _third_party(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_library_knows_no_pytest_and_only_report_and_cli_render() -> None:
    wrong = []
    for module, path in _modules().items():
        used = _third_party(path)
        if used & {"pytest", "_pytest", "memdiag_pytest"}:
            wrong.append(f"{module} imports pytest or the plugin")
        if "rich" in used and _room(module) not in ("report", "cli"):
            wrong.append(f"{module} renders with rich outside report/ and cli/")
    assert not wrong, "\n".join(wrong)

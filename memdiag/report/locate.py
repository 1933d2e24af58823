"""Best-effort source locations for a retainer: where the leaked tensor was allocated,
else where its root is defined (``NAME =`` of a module global, ``class``/``def`` of a
class attribute or a cached function, a thread's frame line).

Nothing here imports the program's modules: a module's file comes from
``sys.modules`` when it is loaded, else from the import system's finder for the top
package and a walk of its directories.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from memdiag.values.retainers import RetainerGroup

__all__ = ["Location", "find_definition", "locate_group", "module_file", "parse_site"]

_SITE = re.compile(r"^(?P<file>.+?):(?P<line>\d+)(?: in (?P<fn>.+))?$")
_THREAD = re.compile(r"\((?P<file>[^()]+?):(?P<line>\d+)\)$")


@dataclass(frozen=True)
class Location:
    """A file and 1-based line; ``what`` says what is there."""

    file: str
    line: int
    what: str = ""


def parse_site(site: str) -> Location | None:
    """``'engine.py:12 in build' -> Location('engine.py', 12, 'allocated in build')``."""
    match = _SITE.match(site.strip())
    if not match:
        return None
    fn = match.group("fn")
    return Location(
        match.group("file"), int(match.group("line")), f"allocated in {fn}" if fn else ""
    )


def module_file(module: str, *, main_file: str | None = None) -> Path | None:
    """The source file of ``module`` without importing it; ``__main__`` is ``main_file``."""
    if module == "__main__":
        return Path(main_file) if main_file else None
    loaded = sys.modules.get(module)
    name = getattr(loaded, "__file__", None) if loaded is not None else None
    if isinstance(name, str) and name.endswith(".py"):
        return Path(name)
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or ():
        for candidate in (Path(base, *rest).with_suffix(".py"), Path(base, *rest, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def find_definition(path: Path, pattern: str, *, after: int = 0) -> int | None:
    """1-based number of the first line after line ``after`` matching ``pattern``."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    compiled = re.compile(pattern)
    for number, line in enumerate(lines[after:], start=after + 1):
        if compiled.match(line):
            return number
    return None


def _split(qualified: str, main_file: str | None) -> tuple[Path, list[str]] | None:
    """``pkg.mod.Class.attr`` -> (file of pkg.mod, ['Class', 'attr']): longest module first."""
    parts = qualified.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        path = module_file(".".join(parts[:cut]), main_file=main_file)
        if path is not None and path.is_file():
            return path, parts[cut:]
    return None


def _definition(group: RetainerGroup, main_file: str | None) -> Location | None:
    kind, root = group.root_kind, group.root_name
    if kind == "thread":
        match = _THREAD.search(root)
        if match and main_file and Path(main_file).name == Path(match.group("file")).name:
            return Location(main_file, int(match.group("line")), "thread frame")
        return None
    if kind == "lru_cache":
        root = root.removeprefix("lru_cache of ")
    if kind not in ("module", "class", "lru_cache"):
        return None
    found = _split(root, main_file)
    if found is None:
        return None
    path, names = found
    if kind == "lru_cache":
        line = find_definition(path, rf"^\s*(async\s+)?def\s+{re.escape(names[-1])}\b")
        return Location(str(path), line, f"def {names[-1]}") if line else None
    if len(names) == 1:
        name = re.escape(names[0])
        line = find_definition(path, rf"^{name}\s*(:[^=]*)?=")
        return Location(str(path), line, f"{names[0]} =") if line else None
    owner = find_definition(path, rf"^\s*class\s+{re.escape(names[0])}\b")
    if owner is None:
        return None
    attr = find_definition(path, rf"^\s+{re.escape(names[-1])}\s*(:[^=]*)?=", after=owner)
    return Location(str(path), attr or owner, ".".join(names))


def locate_group(group: RetainerGroup, *, main_file: str | None = None) -> Location | None:
    """The allocation site when recorded, else the root's definition; ``None`` if unknown."""
    if group.alloc_site:
        site = parse_site(group.alloc_site)
        if site is not None:
            return site
    return _definition(group, main_file)

"""Advice fitted to the retainer's root, and source locations for annotations."""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memdiag.report.advice import advice_for, advice_for_group
from memdiag.report.locate import Location, locate_group, parse_site
from memdiag.values.retainers import RetainerGroup
from tests.report import sample
from tests.report.sample import sample_result


def _group(data: RetainerGroup | dict[str, Any]) -> RetainerGroup:
    return data if isinstance(data, RetainerGroup) else RetainerGroup.from_json(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (sample.ROPE_GROUP, "clear `_ROPE_DICT` in shutdown (`_ROPE_DICT.clear()`"),
        (sample.SINGLETON_GROUP, "reset `Workspace._instance` in shutdown"),
        (sample.LRU_GROUP, "call `supports_kw.cache_clear()` in shutdown"),
        (sample.THREAD_GROUP, "stop and join thread 'detok' in shutdown (its frame holds local"),
        (sample.FROZEN_GROUP, "call gc.unfreeze() in shutdown"),
        (
            dataclasses.replace(
                sample.ROPE_GROUP, chain=(), suspect_index=None, root_name="m.MODEL"
            ),
            "release `MODEL` in shutdown",
        ),
        (
            dataclasses.replace(sample.ROPE_GROUP, known="torch compile cache"),
            "expected: torch compile cache",
        ),
        ({"root_kind": "registry", "root_name": "engine.hooks module state"}, "unregister"),
        ({"root_kind": "exception", "root_name": "current exception ValueError"}, "traceback"),
        (sample.UNROOTED_GROUP, ""),
    ],
)
def test_advice_follows_the_root(data: RetainerGroup | dict[str, Any], expected: str) -> None:
    advice = advice_for_group(_group(data))
    assert (expected in advice) if expected else advice == ""


def test_finding_advice_is_the_fallback() -> None:
    findings = {f.kind.value: f for f in sample_result().findings}
    assert (
        advice_for(findings["allocator_cache"]) == "torch.cuda.empty_cache() would return 1.0 GiB"
    )
    assert advice_for(findings["live_tensors"]).startswith("call `supports_kw.cache_clear()`")


def test_retainer_group_reads_partial_and_odd_dicts() -> None:
    group = _group({"root_name": "x.Y", "retained_bytes": "12", "suspect_index": 7, "chain": [3]})
    assert (group.root_kind, group.retained_bytes, group.suspect_index, group.chain) == (
        "unknown",
        12,
        None,
        (),
    )
    assert group.chain_text() == "x.Y" and group.suspect_text() == ""


def test_parse_site() -> None:
    assert parse_site("engine/model.py:88 in Model.__init__") == Location(
        "engine/model.py", 88, "allocated in Model.__init__"
    )
    assert parse_site("C:/x/y.py:3") == Location("C:/x/y.py", 3, "")
    assert parse_site("no line here") is None


ENGINE = """\
import functools

_ROPE_DICT: dict[int, object] = {}
MODEL = None


class Workspace:
    size = 3
    _instance: "Workspace | None" = None


@functools.lru_cache
def supports_kw(fn, name):
    return True
"""


@pytest.fixture
def engine_module(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "memdiag_locate_engine.py"
    path.write_text(ENGINE)
    module = types.ModuleType("memdiag_locate_engine")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module
    yield path
    del sys.modules[module.__name__]


@pytest.mark.parametrize(
    ("root_kind", "root_name", "line", "what"),
    [
        ("module", "memdiag_locate_engine._ROPE_DICT", 3, "_ROPE_DICT ="),
        ("module", "memdiag_locate_engine.MODEL", 4, "MODEL ="),
        ("class", "memdiag_locate_engine.Workspace._instance", 9, "Workspace._instance"),
        ("lru_cache", "lru_cache of memdiag_locate_engine.supports_kw", 13, "def supports_kw"),
    ],
)
def test_root_definitions_are_found_in_the_module_file(
    engine_module: Path, root_kind: str, root_name: str, line: int, what: str
) -> None:
    found = locate_group(_group({"root_kind": root_kind, "root_name": root_name}))
    assert found == Location(str(engine_module), line, what)


def test_main_module_globals_are_found_in_the_script(tmp_path: Path) -> None:
    script = tmp_path / "run_engine.py"
    script.write_text(ENGINE)
    group = _group({"root_kind": "module", "root_name": "__main__._ROPE_DICT"})
    assert locate_group(group, main_file=str(script)) == Location(str(script), 3, "_ROPE_DICT =")
    assert locate_group(group) is None
    thread = _group({"root_kind": "thread", "root_name": "thread 'w' in W.run (run_engine.py:12)"})
    assert locate_group(thread, main_file=str(script)) == Location(str(script), 12, "thread frame")


def test_allocation_site_wins_and_unknowns_are_none() -> None:
    assert locate_group(_group(sample.LRU_GROUP)) == Location(
        "engine/model.py", 88, "allocated in Model.__init__"
    )
    assert locate_group(_group(sample.FROZEN_GROUP)) is None
    assert locate_group(_group({"root_kind": "module", "root_name": "no_such_pkg.X"})) is None
    missing = _group({"root_kind": "module", "root_name": "memdiag.report.NOT_DEFINED"})
    assert locate_group(missing) is None


def test_packages_are_found_without_importing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "memdiag_locate_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "state.py").write_text("# state\nCACHE = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = _group({"root_kind": "module", "root_name": "memdiag_locate_pkg.state.CACHE"})
    assert locate_group(group) == Location(str(package / "state.py"), 2, "CACHE =")
    assert "memdiag_locate_pkg" not in sys.modules

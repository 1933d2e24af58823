"""Holders outside the Python heap (atexit callbacks, a thread's contextvars context,
logging's registry, native code) are named with advice that frees the memory, and no
group is an empty "0 B" one: a real program under ``memdiag run``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

MiB = 1024 * 1024

# -- holders outside the heap, logging, native code --------------------------------------

OUTSIDE = """\
import atexit, contextvars, logging, torch

def make():
    big = torch.ones(6 << 20)          # 24 MiB
    def flush():
        return big.sum()
    atexit.register(flush)

make()
REQUEST = contextvars.ContextVar("request")
REQUEST.set(torch.ones(5 << 20))       # 20 MiB
log = logging.getLogger("engine")
log.cache = torch.ones(4 << 20)        # 16 MiB
log = None
mylog = logging.getLogger("worker")
mylog.buffers = [torch.ones(3 << 20)]  # 12 MiB
BASE = torch.ones(2 << 20)             # 8 MiB, plus a view only atexit holds
atexit.register(print, BASE.view(-1)[:10], end="")
"""


MEMDIAG_RUN = (sys.executable, "-m", "memdiag", "run", "--device", "cpu", "--settle", "0")


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    where = tmp_path_factory.mktemp("outside")
    script = where / "outside.py"
    script.write_text(OUTSIDE)
    out = where / "r.json"
    proc = subprocess.run(
        [*MEMDIAG_RUN, "--json", str(out), "-vv", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    data = json.loads(out.read_text())
    groups = {g["root_name"]: g for f in data["findings"] for g in f["retainers"]}
    groups["__stderr__"] = {"text": proc.stderr}
    return groups


def test_atexit_callbacks_are_named_not_an_unreachable_cycle(outside: dict[str, Any]) -> None:
    group = outside["atexit callbacks"]
    assert group["root_kind"] == "registry"
    assert group["retained_bytes"] == 24 * MiB
    assert "function make.<locals>.flush" in group["chain_text"]
    assert "gc.collect() does not free" in group["note"]
    text = outside["__stderr__"]["text"]
    assert "unreachable cycle" not in text and "gc.collect() would free" not in text
    assert "atexit.unregister(flush)" in text


def test_context_variables_are_named_with_their_variable(outside: dict[str, Any]) -> None:
    (name,) = [n for n in outside if n.startswith("contextvars context")]
    group = outside[name]
    assert group["retained_bytes"] == 20 * MiB
    assert group["chain_text"].startswith(f"{name} -> ContextVar 'request'")
    assert "reset the ContextVar 'request'" in outside["__stderr__"]["text"]


def test_loggers_are_kept_by_loggings_registry(outside: dict[str, Any]) -> None:
    group = outside["logging.getLogger('engine')"]
    assert group["retained_bytes"] == 16 * MiB
    assert group["chain_text"] == "logging.getLogger('engine') -> .cache (cpu, 16.0 MiB)"
    assert not group["other_roots"]  # not every other logger of the process
    text = outside["__stderr__"]["text"]
    assert "run `del logging.getLogger('engine').cache`" in text
    assert "`log = None`" not in text
    named = outside["__main__.mylog"]
    assert named["retained_bytes"] == 12 * MiB and not named["other_roots"]
    assert "`mylog = None` frees nothing" in text and "run `del mylog.buffers`" in text
    assert "logging.Logger.manager.loggerDict" in text


def test_no_empty_zero_byte_groups(outside: dict[str, Any]) -> None:
    groups = [g for n, g in outside.items() if n != "__stderr__"]
    assert all(g["retained_bytes"] > 0 and g["storage_count"] > 0 for g in groups), groups
    lines = outside["__stderr__"]["text"].splitlines()
    assert not [line for line in lines if re.match(r"^\W*0 B ", line)], lines

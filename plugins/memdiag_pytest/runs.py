"""What one check covers: a run (a test, a module or the session) and the test being run.

A :class:`CheckRun` is one tracker's life; its unit is the test (``function`` scope),
the test's module, or the session, as :func:`unit_of` names it.  The run's check
happens when its last teardown is done but before wider fixtures are torn down:
:func:`first_wider_node_torn_down` finds the node whose finalizer is that moment,
and :func:`drop_test_references` lets go of what pytest itself still holds of the
test then.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest
from _pytest.nodes import Node

from memdiag.check.exclusion import Exclusion
from memdiag.check.tracker import Tracker
from memdiag.values.result import CheckResult
from memdiag.values.units import Tolerance

from .marks import MarkOptions

__all__ = [
    "RANK",
    "CheckRun",
    "TestState",
    "drop_test_references",
    "first_wider_node_torn_down",
    "unit_of",
]

RANK = {"function": 0, "class": 1, "module": 2, "package": 3, "session": 4}
"""Fixture scopes ranked from the narrowest (0) to the widest."""


@dataclass
class CheckRun:
    """One tracker's life: a test, a module or the session."""

    scope: str
    key: str
    label: str
    tolerance: dict[str, Tolerance] | None
    settle: float
    disabled: bool = False
    tracker: Tracker | None = None
    result: CheckResult | None = None
    """Set when the check ran before wider fixtures were torn down."""
    fixtures: list[str] = field(default_factory=list)
    """Fixtures of wider than function scope set up inside the run (blamed on a leak)."""

    @property
    def rank(self) -> int:
        return RANK[self.scope]


@dataclass
class TestState:
    """The test being run."""

    item: pytest.Item
    run: CheckRun | None
    checked: bool
    """The test is checked on its own (function scope) or is part of a module/session run."""
    options: MarkOptions
    deferred: bool
    """Reports are logged after teardown, so the call report can still be changed."""
    reports: dict[str, pytest.TestReport] = field(default_factory=dict)
    phase_start: int = 0
    phase_name: str | None = None
    exclusion: Exclusion | None = None
    """Open while a test opted out inside a module or session run is running."""
    unit_ends: bool = True


def unit_of(item: pytest.Item, scope: str) -> tuple[str, pytest.Collector | None, str]:
    """(key, node whose markers configure the run, label) of the run an item belongs to."""
    if scope == "session":
        return "session", None, "the session"
    if scope == "module":
        module = item.getparent(pytest.Module)
        if module is not None:
            return module.nodeid, module, module.nodeid
    return item.nodeid, None, item.nodeid


def first_wider_node_torn_down(
    item: pytest.Item, nextitem: pytest.Item | None, scope: str
) -> Node | None:
    """The innermost node wider than the run's scope that this teardown tears down.

    pytest tears nodes down innermost first; a finalizer added to that node now runs
    before the node's fixtures are finalized.
    """
    chain = item.listchain()
    if scope == "function":
        wider = chain[:-1]
    elif scope == "module":
        module = item.getparent(pytest.Module)
        wider = chain[: chain.index(module)] if module in chain else []
    else:
        return None
    needed = nextitem.listchain() if nextitem is not None else []
    for index, node in enumerate(wider):
        if index >= len(needed) or needed[index] is not node:
            return wider[-1]
    return None


def drop_test_references(item: pytest.Item) -> None:
    """Drop what pytest itself still holds of the test when the check runs.

    ``item.funcargs`` keeps fixture values until the protocol ends (pytest drops it
    right after), and a failed test's exception, traceback and frames stay in
    ``sys.last_*`` until the next test's call (pytest clears them there).  The
    debugger, if any, has already run.
    """
    funcargs = getattr(item, "funcargs", None)
    if isinstance(funcargs, dict):
        funcargs.clear()
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)

"""memdiag's pytest plugin: ``pytest --gpu-leak-check`` turns every test into a leak test.

Registered through the ``pytest11`` entry point.  This module imports only pytest and
the standard library: without ``--gpu-leak-check`` (and without a test marked
``gpu_leak_check``) a test run loads neither torch, nor memdiag's backends, nor any
vendor library.  The stateful :class:`~memdiag_pytest.manager.LeakCheckManager` is created
and registered only when the check is on.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from .marks import MARKERS, marker_help
from .options import (
    CHILD_ENV,
    MemdiagWarning,
    add_options,
    child_events_path,
    is_enabled,
    options_given,
    read_settings,
)

__all__ = ["MemdiagWarning", "NullTracker"]

MANAGER = "memdiag-manager"
RESULTS = "memdiag-results"
_HEADER = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not _is_xdist_worker(config) and getattr(config.option, "dist", "no") != "no"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker_help(marker))
    if os.environ.get(CHILD_ENV):
        # This process runs one test for an isolated parent (--gpu-leak-isolate=spawn).
        from .isolation import ChildChannel

        path = child_events_path()
        assert path is not None
        config.pluginmanager.register(ChildChannel(config, path), "memdiag-child")
    if is_enabled(config):
        _activate(config, only_marked=False)
    elif not _is_xdist_worker(config):
        # Results of tests opted in with the marker still need a summary here.
        from .results import ResultsCollector

        config.pluginmanager.register(ResultsCollector(config, json_path=None, header=""), RESULTS)


def _activate(config: pytest.Config, *, only_marked: bool) -> None:
    """Validate the options (fail fast) and register what this process needs."""
    from memdiag.backends.registry import UsageError, select

    from .results import ResultsCollector

    settings = read_settings(config)
    try:
        selection = select(settings.device)
    except UsageError as exc:
        raise pytest.UsageError(
            f"--gpu-leak-device / gpu_leak_device {settings.device!r}: {exc}; accepted: auto, "
            "cpu, cuda, cuda:N[,cuda:M], fake"
        ) from None
    devices = ", ".join(selection.devices)
    scope = "function scope, marked tests only" if only_marked else settings.describe()
    header = f"{devices}; {scope}"
    config.stash[_HEADER] = [f"memdiag: leak check on {header}"] + [
        f"memdiag: {notice}" for notice in selection.notices
    ]
    if not _is_xdist_worker(config):
        existing = config.pluginmanager.get_plugin(RESULTS)
        if existing is not None:
            config.pluginmanager.unregister(existing, RESULTS)
        config.pluginmanager.register(
            ResultsCollector(config, json_path=settings.json_path, header=header), RESULTS
        )
    if _is_xdist_controller(config):
        return  # the workers check; the controller only reports
    from .manager import LeakCheckManager

    config.pluginmanager.register(
        LeakCheckManager(config, settings, selection, only_marked=only_marked), MANAGER
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without the flag, a test marked ``gpu_leak_check`` still opts itself in."""
    if config.pluginmanager.has_plugin(MANAGER) or is_enabled(config):
        return
    if any(item.get_closest_marker("gpu_leak_check") for item in items):
        _activate(config, only_marked=True)
    elif not _is_xdist_worker(config) and (given := options_given(config)):
        names = ", ".join(given)
        warnings.warn(
            MemdiagWarning(
                f"{names} given, but the leak check is off (no --gpu-leak-check, no "
                "gpu_leak_check ini value, no test marked gpu_leak_check), so nothing is "
                "checked; add --gpu-leak-check"
            ),
            stacklevel=1,
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash.get(_HEADER, [])


class NullTracker:
    """What ``gpu_leak_tracker`` gives a test that is not checked: phases are no-ops."""

    enabled = False
    result = None
    phases: tuple[object, ...] = ()
    baseline: dict[str, object] = {}  # noqa: RUF012 - read-only, empty

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield

    def end_phase(self, name: str | None = None) -> None:
        return None

    def read(self) -> dict[str, object]:
        return {}


@pytest.fixture
def gpu_leak_tracker(request: pytest.FixtureRequest) -> Any:
    """The memdiag tracker checking this test: ``with gpu_leak_tracker.phase("infer"):``
    marks a phase, ``.read()`` reads the devices now.  ``memdiag.phase()`` in engine code
    reports into the same tracker.  Without the check, a :class:`NullTracker`."""
    manager = request.config.pluginmanager.get_plugin(MANAGER)
    tracker = manager.tracker_for(request.node) if manager is not None else None
    return tracker if tracker is not None else NullTracker()

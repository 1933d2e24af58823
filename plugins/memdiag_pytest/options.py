"""The plugin's command-line options, each mirrored by an ini key and read through one helper.

Only the standard library and pytest at import time: without ``--gpu-leak-check`` this
module is all of the plugin that a test run loads.  :func:`read_settings` validates
every value (importing ``memdiag.values.units`` for the byte sizes) and raises
:class:`pytest.UsageError` saying what is accepted.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pytest

if TYPE_CHECKING:
    from memdiag.report.known import KnownLeaks
    from memdiag.values.units import Tolerance

__all__ = [
    "CHILD_ENV",
    "MODES",
    "SCOPES",
    "Settings",
    "add_options",
    "child_events_path",
    "is_enabled",
    "read_settings",
    "value_or_ini",
]

CHILD_ENV = "MEMDIAG_PYTEST_CHILD"
"""Set in a spawned child (``--gpu-leak-isolate=spawn``): the file its reports go to."""

SCOPES = ("function", "module", "session")
"""Check granularity: one tracker per test, per module, or for the whole session."""

MODES = ("none", "fork", "spawn")
"""Where each test runs (``--gpu-leak-isolate``): in pytest, a forked or a spawned child."""


class MemdiagWarning(pytest.PytestWarning):
    """An option or condition that makes memdiag's check do something else than asked."""


def child_events_path() -> Path | None:
    """Where this process sends its reports, when it is a spawned child."""
    value = os.environ.get(CHILD_ENV)
    return Path(value) if value else None


@dataclass(frozen=True)
class _Option:
    name: str
    """The option's ``dest`` and its ini key."""
    kind: str
    """``flag`` (on/off), ``value`` (one string) or ``list`` (repeatable)."""
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def ini_type(self) -> Literal["bool", "string", "args"]:
        if self.kind == "flag":
            return "bool"
        return "args" if self.kind == "list" else "string"


OPTIONS = (
    _Option(
        "gpu_leak_check",
        "flag",
        "",
        "fail every test that leaves device memory allocated (memdiag leak check)",
    ),
    _Option(
        "gpu_leak_device",
        "value",
        "SPEC",
        "devices to check: auto (every accelerator, else CPU tensors), cpu, cuda, "
        "cuda:0,cuda:1, or fake (default: auto)",
    ),
    _Option(
        "gpu_leak_tolerance",
        "list",
        "[DEVICE=]SIZE|PCT%",
        "growth over baseline allowed per device, e.g. 16MiB, 0.5%, cuda:1=64MiB "
        "(repeatable; default 1 MiB)",
    ),
    _Option(
        "gpu_leak_settle",
        "value",
        "SECONDS",
        "how long a failing check polls for memory to come back before blaming anything "
        "(default 1.0; ROCm releases VRAM lazily, use ~10)",
    ),
    _Option(
        "gpu_leak_scope",
        "value",
        "SCOPE",
        "check after each test (function, the default), or after a module's or the "
        "session's fixtures are torn down (module, session), blaming those fixtures",
    ),
    _Option(
        "gpu_leak_alloc_stacks",
        "flag",
        "",
        "record allocation stacks to show where leaked tensors were allocated (slower)",
    ),
    _Option(
        "gpu_leak_isolate",
        "value",
        "MODE",
        "run each test in a process of its own: fork (a child forked from pytest; refused "
        "when CUDA is initialised in pytest) or spawn (a fresh interpreter per test, safe "
        "with CUDA in pytest); default none (--forked means fork)",
    ),
    _Option(
        "gpu_leak_json",
        "value",
        "PATH",
        "write the session report (per test: peak, end and leaked bytes per device, "
        "leaks by signature) to a JSON file; memdiag report / merge / compare read it",
    ),
    _Option(
        "gpu_leak_known",
        "value",
        "FILE",
        "known-leaks file (write it with `memdiag known update`): leaks it lists are "
        "reported, not failed, unless they grew beyond their recorded bytes",
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("memdiag", "GPU memory leak check (memdiag)")
    for option in OPTIONS:
        if option.kind == "flag":
            group.addoption(
                option.flag,
                action="store_true",
                default=None,
                dest=option.name,
                help=option.help.replace("%", "%%"),
            )
        else:
            group.addoption(
                option.flag,
                action="append" if option.kind == "list" else "store",
                default=None,
                dest=option.name,
                metavar=option.metavar,
                help=option.help.replace("%", "%%"),  # argparse formats help with %
            )
        parser.addini(option.name, f"default for {option.flag}: {option.help}", option.ini_type)


def value_or_ini(config: pytest.Config, name: str) -> object:
    """The command-line value if given, else the ini value (``None``/``[]``/``False`` if unset)."""
    value = config.getoption(name, default=None)
    if value is not None:
        return value
    return config.getini(name)


def options_given(config: pytest.Config) -> list[str]:
    """The ``--gpu-leak-*`` options given on the command line, other than the check itself."""
    return [
        option.flag
        for option in OPTIONS
        if option.name != "gpu_leak_check"
        and config.getoption(option.name, default=None) not in (None, False, [])
    ]


def is_enabled(config: pytest.Config) -> bool:
    return bool(value_or_ini(config, "gpu_leak_check"))


@dataclass(frozen=True)
class Settings:
    """Validated option values."""

    device: str
    tolerance: dict[str, Tolerance] | None
    settle: float
    scope: str
    alloc_stacks: bool
    json_path: Path | None
    isolate: str = "none"
    """``none``, ``fork`` or ``spawn``: where each test runs (``--forked`` means fork)."""
    known: KnownLeaks | None = None
    """The known-leaks file's entries (``--gpu-leak-known``), read once at start."""

    def describe(self) -> str:
        from memdiag.check.tracker import DEFAULT_TOLERANCE
        from memdiag.values.units import describe_tolerances

        tolerance = describe_tolerances(self.tolerance, DEFAULT_TOLERANCE)
        isolated = "" if self.isolate == "none" else f", each test in a {self.isolate}ed process"
        count = len(self.known.leaks) if self.known is not None else 0
        known = f", {count} known leak{'' if count == 1 else 's'}" if self.known is not None else ""
        return (
            f"{self.scope} scope, tolerance {tolerance}, settle {self.settle:g} s{isolated}{known}"
        )


def _text(config: pytest.Config, name: str) -> str | None:
    value = value_or_ini(config, name)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_tolerances(values: list[str], *, where: str) -> dict[str, Tolerance] | None:
    """``["16MiB", "cuda:1=64MiB"]`` -> ``{"*": ..., "cuda:1": ...}``."""
    from memdiag.values.units import parse_tolerances as parse

    try:
        return parse(values) or None
    except ValueError as exc:
        raise pytest.UsageError(f"{where} {exc}") from None


def parse_settle(value: object, *, where: str) -> float:
    from memdiag.values.units import parse_seconds

    try:
        return parse_seconds(value, what=where)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def read_isolate(config: pytest.Config, scope: str) -> str:
    """``none``, ``fork`` or ``spawn``, validated against the scope and the platform."""
    if child_events_path() is not None:
        return "none"  # this process is the child of an isolated test
    isolate = _text(config, "gpu_leak_isolate") or "none"
    if isolate not in MODES:
        raise pytest.UsageError(
            f"--gpu-leak-isolate / gpu_leak_isolate {isolate!r} is not a mode; accepted: "
            f"{', '.join(MODES)}"
        )
    forked = bool(config.getoption("forked", default=False))
    asked = f"--gpu-leak-isolate={isolate}" if isolate != "none" else "--forked"
    if (isolate != "none" or forked) and scope != "function":
        raise pytest.UsageError(
            f"{asked} runs each test in a process of its own, so a {scope}-scoped check "
            "cannot see the tests of its scope together; use --gpu-leak-scope=function, "
            "or drop the isolation"
        )
    if (isolate == "fork" or (forked and isolate == "none")) and not hasattr(os, "fork"):
        raise pytest.UsageError(
            f"{asked} needs os.fork, which this platform does not have; use "
            "--gpu-leak-isolate=spawn"
        )
    return "fork" if forked and isolate == "none" else isolate


def read_settings(config: pytest.Config) -> Settings:
    """Every option's value, validated; raises :class:`pytest.UsageError`."""
    scope = _text(config, "gpu_leak_scope") or "function"
    if scope not in SCOPES:
        raise pytest.UsageError(
            f"--gpu-leak-scope / gpu_leak_scope {scope!r} is not a scope; "
            f"accepted: {', '.join(SCOPES)}"
        )
    raw_tolerance = value_or_ini(config, "gpu_leak_tolerance")
    tolerance_values = [str(v) for v in raw_tolerance] if isinstance(raw_tolerance, list) else []
    tolerance = parse_tolerances(
        tolerance_values, where="--gpu-leak-tolerance / gpu_leak_tolerance"
    )
    settle_text = _text(config, "gpu_leak_settle")
    settle = (
        1.0
        if settle_text is None
        else parse_settle(settle_text, where="--gpu-leak-settle / gpu_leak_settle")
    )
    alloc_stacks = bool(value_or_ini(config, "gpu_leak_alloc_stacks"))
    if alloc_stacks and importlib.util.find_spec("memdiag.heap.alloc_stacks") is None:
        raise pytest.UsageError(
            "--gpu-leak-alloc-stacks / gpu_leak_alloc_stacks needs memdiag.heap.alloc_stacks, "
            "which this memdiag installation does not have; upgrade memdiag or drop the option"
        )
    json_text = _text(config, "gpu_leak_json")
    json_path = Path(json_text) if json_text else None
    if json_path is not None:
        json_path = (
            json_path if json_path.is_absolute() else config.invocation_params.dir / json_path
        )
        if not json_path.parent.is_dir():
            raise pytest.UsageError(
                f"--gpu-leak-json / gpu_leak_json {json_text!r}: directory "
                f"{str(json_path.parent)!r} does not exist; accepted: a file path in an "
                "existing directory"
            )
    isolate = read_isolate(config, scope)
    known = read_known(config)
    return Settings(
        isolate=isolate,
        device=_text(config, "gpu_leak_device") or "auto",
        tolerance=tolerance,
        settle=settle,
        scope=scope,
        alloc_stacks=alloc_stacks,
        json_path=json_path,
        known=known,
    )


def read_known(config: pytest.Config) -> KnownLeaks | None:
    """The ``--gpu-leak-known`` file, relative to the invocation directory."""
    text = _text(config, "gpu_leak_known")
    if text is None:
        return None
    from memdiag.report.known import KnownLeaksError, load_known

    path = Path(text)
    path = path if path.is_absolute() else config.invocation_params.dir / path
    try:
        return load_known(path)
    except KnownLeaksError as exc:
        raise pytest.UsageError(
            f"--gpu-leak-known / gpu_leak_known {text!r}: {exc}; accepted: a file written by "
            "`memdiag known update`"
        ) from None

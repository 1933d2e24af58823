"""Each test in a process of its own: ``--gpu-leak-isolate=fork|spawn`` (and ``--forked``).

``fork``: the test runs in a child forked from the pytest process; cheap, and the
child inherits what the parent imported and set up.  A child forked after the parent
initialised CUDA cannot use CUDA, so fork isolation is refused when CUDA is
initialised in the pytest process (:func:`cuda_initialized`).

``spawn``: the test runs in a fresh interpreter, ``python -m pytest NODEID`` with the
session's own arguments; safe with CUDA in the parent, and costs an interpreter
start and a collection of the test's module per test.

Either way the child runs pytest's whole protocol for the one test (every fixture
is set up and torn down in the child, as pytest-forked does) with memdiag's check,
and sends its reports back as JSON lines through pytest's own
``pytest_report_to_serializable`` / ``pytest_report_from_serializable`` (as xdist
does), together with the warnings it recorded.  pytest-forked 1.7.5 cannot send
pytest 9.2's reports (it ``marshal``\\ s ``report.__dict__``, which now holds a
``NodeId`` object, so every child exits with status 3): with the check on, memdiag
runs the tests that ``--forked`` or ``@pytest.mark.forked`` ask to fork itself.

A child that dies before sending its reports (a signal, ``os._exit``) fails the
test with what it died of and the output it left.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Literal

import pytest
from _pytest.config import create_terminal_writer
from _pytest.runner import runtestprotocol

from .failure import MessageRepr
from .options import CHILD_ENV, child_events_path

__all__ = [
    "CHILD_ENV",
    "ChildChannel",
    "Isolation",
    "child_events_path",
    "cuda_initialized",
    "wants_fork",
]

_EXIT_INTERRUPTED = 70
_EXIT_INTERNAL = 71

_PARENT_ONLY: dict[str, object] = {
    # What the parent does for the whole session; a child runs one test in-process.
    "numprocesses": None,
    "maxprocesses": None,
    "dist": "no",
    "forked": False,
    "usepdb": False,
    "xmlpath": None,
    "report_log": None,
    "htmlpath": None,
    "gpu_leak_json": None,
    "gpu_leak_isolate": "none",
}


def cuda_initialized() -> bool:
    """CUDA is initialised in this process (never imports torch to find out)."""
    torch = sys.modules.get("torch")
    is_initialized = getattr(getattr(torch, "cuda", None), "is_initialized", None)
    return bool(is_initialized()) if callable(is_initialized) else False


def wants_fork(item: pytest.Item) -> bool:
    """The test asks pytest-forked to fork it (``--forked`` or ``@pytest.mark.forked``)."""
    return bool(item.config.getoption("forked", default=False)) or (
        item.get_closest_marker("forked") is not None
    )


CUDA_REFUSAL = (
    "CUDA is initialised in the pytest process ({where}), and a child forked from it "
    "cannot use CUDA, so memdiag does not fork tests (--gpu-leak-isolate=fork, --forked, "
    "@pytest.mark.forked); use --gpu-leak-isolate=spawn (a fresh interpreter per test), "
    "or keep CUDA out of the pytest process (initialise it in fixtures or tests)"
)


# -- the events a child sends --------------------------------------------------------------
def _warning_data(message: warnings.WarningMessage) -> dict[str, Any]:
    msg = message.message
    return {
        "message": str(msg),
        "category": f"{message.category.__module__}:{message.category.__qualname__}",
        "filename": str(message.filename),
        "lineno": int(message.lineno or 0),
    }


def _warning_from(data: dict[str, Any]) -> warnings.WarningMessage:
    module, _, name = str(data.get("category", "")).partition(":")
    category: type[Warning] = UserWarning
    try:
        found = getattr(importlib.import_module(module), name)
        if isinstance(found, type) and issubclass(found, Warning):
            category = found
    except Exception:  # noqa: BLE001 - an unknown class still gives its text
        pass
    try:
        message: Warning = category(str(data.get("message", "")))
    except Exception:  # noqa: BLE001 - a warning class with another signature
        message = UserWarning(f"{module}.{name}: {data.get('message', '')}")
        category = UserWarning
    return warnings.WarningMessage(
        message, category, str(data.get("filename", "?")), int(data.get("lineno", 0)), None, None
    )


class ChildChannel:
    """Registered in a child: writes its reports and warnings to the events file."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.path = path

    def _send(self, event: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(event, default=str) + "\n")

    def send_report(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self._send({"event": "report", "data": data})

    def send_exit(self, message: str, returncode: int | None) -> None:
        self._send({"event": "exit", "message": message, "returncode": returncode})

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        if isinstance(excinfo.value, pytest.exit.Exception):
            self.send_exit(excinfo.value.msg, excinfo.value.returncode)
        else:
            self._send({"event": "interrupted"})

    # -- hooks (a spawned child: its own session) -------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        for name, value in _PARENT_ONLY.items():
            if hasattr(config.option, name):
                setattr(config.option, name, value)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # The child's own header, progress and summary are of no use to anyone; what
        # it prints outside pytest's capture still reaches the parent.
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            sink = open(self.path.with_suffix(".terminal"), "w", encoding="utf-8")
            reporter._tw = create_terminal_writer(self.config, sink)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.send_report(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.send_report(report)

    def pytest_warning_recorded(
        self,
        warning_message: warnings.WarningMessage,
        when: str,
        nodeid: str,
        location: tuple[str, int, str] | None,
    ) -> None:
        self._send(
            {
                "event": "warning",
                "warning": _warning_data(warning_message),
                "when": when,
                "nodeid": nodeid,
                "location": list(location) if location else None,
            }
        )


# -- the parent side -----------------------------------------------------------------------
class Isolation:
    """Runs one test in a child (``fork`` or ``spawn``) and logs the child's reports."""

    def __init__(self, config: pytest.Config, mode: str) -> None:
        self.config = config
        self.mode = mode

    def mode_for(self, item: pytest.Item) -> str | None:
        """``fork``, ``spawn`` or ``None`` (run in this process) for one test."""
        if self.mode != "none":
            return self.mode
        return "fork" if wants_fork(item) else None

    def run(self, item: pytest.Item, nextitem: pytest.Item | None, mode: str) -> None:
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        refused = mode == "fork" and cuda_initialized()
        with tempfile.TemporaryDirectory(prefix="memdiag-") as tmp:
            events = Path(tmp) / "events.jsonl"
            events.touch()
            if refused:
                ended = ""
            elif mode == "fork":
                ended = self._fork(item, events)
            else:
                ended = self._spawn(item, events, Path(tmp))
            reports, complete, stop = self._replay(events)
        if stop is not None and stop["event"] == "interrupted":
            raise KeyboardInterrupt
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        if refused:
            where = "by a test or fixture that ran in it before this one"
            text = "memdiag: not run: " + CUDA_REFUSAL.format(where=where)
            ihook.pytest_runtest_logreport(report=_crash_report(item, reports, text, "setup"))
        elif not complete and stop is None:
            text = f"memdiag: the {mode}ed child running this test {ended}"
            ihook.pytest_runtest_logreport(report=_crash_report(item, reports, text))
        item.session._setupstate.teardown_exact(nextitem)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        if stop is not None:
            pytest.exit(str(stop.get("message", "")), returncode=stop.get("returncode"))

    # -- fork --------------------------------------------------------------------------------
    def _fork(self, item: pytest.Item, events: Path) -> str:
        """How the forked child ended, said for a test it did not finish."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child ends in os._exit (its coverage is lost)
            _forked_child(item, events)
        status = _wait(pid)
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            return f"crashed with signal {number} ({_signal_name(number)})"
        code = os.WEXITSTATUS(status)
        if code == _EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        return f"exited with status {code} before it finished (its stderr says why)"

    # -- spawn -------------------------------------------------------------------------------
    def _spawn(self, item: pytest.Item, events: Path, tmp: Path) -> str:
        """How the spawned child ended, said for a test it did not finish."""
        config = self.config
        output = tmp / "output.txt"
        env = dict(os.environ)
        env[CHILD_ENV] = str(events)
        env.setdefault("COLUMNS", str(config.get_terminal_writer().fullwidth))
        args = spawn_args(config, item, tmp / "cache")
        with output.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", *args],
                cwd=config.invocation_params.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        text = output.read_text(errors="replace")
        if code < 0:
            return f"crashed with signal {-code} ({_signal_name(-code)})" + _tail(text)
        if text:
            sys.stdout.write(text)  # printed outside pytest's capture (e.g. under -s)
            sys.stdout.flush()
        terminal = events.with_suffix(".terminal")
        said = terminal.read_text(errors="replace") if terminal.exists() else ""
        return (
            f"exited with status {code} before it finished (`python -m pytest "
            f"{' '.join(args)}` in {config.invocation_params.dir})" + _tail(said or text)
        )

    # -- replay ------------------------------------------------------------------------------
    def _replay(self, events: Path) -> tuple[list[pytest.TestReport], bool, dict[str, Any] | None]:
        """The child's reports, whether they are complete, and how it was stopped (if)."""
        config = self.config
        reports: list[pytest.TestReport] = []
        complete = False
        exit_event: dict[str, Any] | None = None
        for line in events.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            kind = event.get("event")
            if kind == "report":
                report = config.hook.pytest_report_from_serializable(
                    config=config, data=event["data"]
                )
                if isinstance(report, pytest.CollectReport):
                    report = _collect_error_as_setup(report)
                    complete = True
                if isinstance(report, pytest.TestReport):
                    complete = complete or report.when == "teardown"
                    fspath, lineno, domain = report.location
                    report.location = (fspath, lineno, domain)
                    reports.append(report)
            elif kind == "warning":
                location = event.get("location")
                config.hook.pytest_warning_recorded.call_historic(
                    kwargs={
                        "warning_message": _warning_from(event["warning"]),
                        "when": event.get("when", "runtest"),
                        "nodeid": event.get("nodeid", ""),
                        "location": tuple(location) if location else None,
                    }
                )
            elif kind in ("exit", "interrupted"):
                exit_event = event
        return reports, complete, exit_event


def spawn_args(config: pytest.Config, item: pytest.Item, cache_dir: Path) -> list[str]:
    """The session's own arguments, with the one test instead of the paths given."""
    given = {str(arg) for arg in (config.getoption("file_or_dir", default=None) or [])}
    args = [str(arg) for arg in config.invocation_params.args if str(arg) not in given]
    nodeid = os.path.join(str(config.rootpath), item.nodeid)
    if config.pluginmanager.has_plugin("cacheprovider"):
        args += ["-o", f"cache_dir={cache_dir}"]  # the session's cache is the parent's
    return [*args, nodeid]


def _forked_child(item: pytest.Item, events: Path) -> None:  # pragma: no cover - see _fork
    """The forked child: run the test's protocol, send the reports, never return."""
    code = _EXIT_INTERNAL
    channel = ChildChannel(item.config, events)
    try:
        # pytest's own warning capture wraps the protocol in the parent, which never
        # sees the child's records: record them here (the filters are the parent's).
        with warnings.catch_warnings(record=True) as recorded:
            reports = runtestprotocol(item, log=False, nextitem=None)
        for message in recorded:
            channel.pytest_warning_recorded(message, "runtest", item.nodeid, None)
        for report in reports:
            channel.send_report(report)
        code = 0
    except KeyboardInterrupt:
        code = _EXIT_INTERRUPTED
    except pytest.exit.Exception as exc:
        channel.send_exit(exc.msg, exc.returncode)
        code = 0
    except BaseException:  # noqa: BLE001 - said on stderr, reported by the parent
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os._exit(code)


def _wait(pid: int) -> int:
    try:
        return os.waitpid(pid, 0)[1]
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _tail(text: str, lines: int = 30) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return ("; its last output:\n" + "\n".join(kept)) if kept else ""


def _collect_error_as_setup(report: pytest.CollectReport) -> pytest.TestReport:
    """A child that could not collect the test's module: a setup error of the test."""
    return pytest.TestReport(
        nodeid=report.nodeid,
        location=(report.fspath, None, report.nodeid),
        keywords={},
        outcome="failed",
        longrepr=report.longrepr,
        when="setup",
        sections=report.sections,
    )


_Phase = Literal["setup", "call", "teardown"]


def _crash_report(
    item: pytest.Item, received: list[pytest.TestReport], text: str, when: _Phase | None = None
) -> pytest.TestReport:
    """The failure of a test whose child did not send (all) its reports."""
    if when is None:
        when = "teardown" if any(r.when == "call" for r in received) else "call"
    path, lineno, _ = item.location
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome="failed",
        longrepr=MessageRepr(text.splitlines()[0], text, path, (lineno or 0) + 1),
        when=when,
    )

"""Terminal report: golden text at width 80 without colour, trimming, colour on TTY only."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from memdiag.report.facts import kind_label
from memdiag.report.json_report import load_json
from memdiag.report.terminal import TerminalReport, render_terminal
from memdiag.values.findings import FindingKind
from tests.report.sample import sample_result

GOLDEN = Path(__file__).parent / "golden"


def _render(verbosity: int = 0, width: int = 80, **console: object) -> str:
    buffer = io.StringIO()
    options: dict[str, object] = {"width": width, "color_system": None, **console}
    render_terminal(sample_result(), Console(file=buffer, **options), verbosity=verbosity)  # type: ignore[arg-type]
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


@pytest.mark.parametrize(("verbosity", "name"), [(0, "terminal.txt"), (2, "terminal-vv.txt")])
def test_terminal_report_matches_golden_text(verbosity: int, name: str) -> None:
    text = _render(verbosity)
    golden = GOLDEN / name
    if os.environ.get("MEMDIAG_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_every_finding_class_is_shown_with_its_label() -> None:
    text = _render()
    for kind in FindingKind:
        assert f" {kind_label(kind)} on " in text, kind


def test_findings_are_leaks_first_then_biggest_first() -> None:
    heads = [line for line in _render().splitlines() if line.startswith(("LEAK ", "note "))]
    assert [h.split(" on ")[0] for h in heads] == [
        "LEAK 773.5 MiB live tensors",
        "LEAK 600.0 MiB other process",
        "LEAK 300.0 MiB outside PyTorch",
        "LEAK 256.0 MiB gc-frozen",
        "LEAK 130.0 MiB private pool",
        "LEAK 128.0 MiB worker process",
        "LEAK 0 B process group",
        "note 1.0 GiB allocator cache",
        "note 500.0 MiB device context",
        "note 32.0 MiB workspaces",
        "note 7.5 MiB native (no tensor)",
    ]


def test_long_lists_are_trimmed_by_verbosity() -> None:
    quiet, verbose = _render(0), _render(2)
    assert "…and 1 more retainers (-v shows more)" in quiet
    assert "…and 1 more tensor groups (-v shows more)" in quiet
    assert "thread 'detok'" not in quiet
    assert "thread 'detok'" in verbose and "…and" not in verbose


def test_advice_names_the_retainer_and_the_cache_to_empty() -> None:
    text = _render()
    assert "fix: call `supports_kw.cache_clear()` in shutdown" in text
    assert "fix: call gc.unfreeze() in shutdown" in text
    assert "fix: torch.cuda.empty_cache() would return 1.0 GiB" in text
    verbose = _render(2)
    assert "allocated at engine/model.py:88 in Model.__init__" in verbose


def test_phase_table_has_baseline_peaks_ends_and_final_check() -> None:
    lines = _render().splitlines()
    assert lines[0] == "cuda:0: memory by phase (tolerance 16.0 MiB, driver 256.0 MiB)"
    assert lines[1].split() == [
        "phase",
        "allocated",
        "reserved",
        "driver",
        "used",
        "this",
        "process",
    ]
    labels = [line[:16].strip() for line in lines[3:11]]
    assert labels == [
        "baseline",
        "create: peak",
        "create: end",
        "infer: peak",
        "infer: end",
        "shutdown: peak",
        "shutdown: end",
        "final check",
    ]


def test_plain_text_without_a_terminal_and_colour_on_one() -> None:
    plain = io.StringIO()
    TerminalReport(sample_result()).render(plain)
    assert "\x1b[" not in plain.getvalue()
    assert "LEAK 773.5 MiB live tensors on cuda:0" in plain.getvalue()
    tty = io.StringIO()
    render_terminal(sample_result(), Console(file=tty, force_terminal=True, width=80))
    assert "\x1b[" in tty.getvalue()


@pytest.mark.parametrize("width", [60, 100])
def test_lines_fit_the_console_width(width: int) -> None:
    lines = _render(2, width=width).splitlines()
    assert max(len(line) for line in lines) <= width


def test_real_run_renders_its_retainer_chain(toy_runs: dict[str, Path]) -> None:
    buffer = io.StringIO()
    render_terminal(load_json(toy_runs["lru_cache"]), Console(file=buffer, width=100))
    text = buffer.getvalue()
    assert "LEAK 10.0 MiB live tensors on cpu" in text
    assert "lru_cache of __main__.supports_kw -> cache key -> bound method" in text
    assert "fix: call `supports_kw.cache_clear()` in shutdown" in text

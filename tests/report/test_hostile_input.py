"""Property-style: random and hostile objects, strings and report files through the
census, the retainer analysis and every renderer (terminal, JSON, HTML, JUnit,
GitHub annotations, compare).  Nothing raises; exit codes stay within 0-4 as
documented (and bad reports are usage errors, 2).  A seeded generator keeps every
run reproducible: set MEMDIAG_FUZZ_SEED to explore other seeds."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch

import memdiag
from memdiag.cli import main
from memdiag.report.base import write_report
from memdiag.report.compare import compare
from memdiag.report.console import plain_console
from memdiag.report.github import GithubReport
from memdiag.report.html import HtmlReport
from memdiag.report.json_report import JsonReport, write_json
from memdiag.report.junit import JunitReport
from memdiag.report.terminal import TerminalReport, render_terminal
from memdiag.values.result import CheckResult
from memdiag.values.retainers import RetainerGroup
from tests.report.sample import sample_result

SEED = int(os.environ.get("MEMDIAG_FUZZ_SEED", "20261129"))

HOSTILE_TEXT = [
    "[/]",
    "[bold red]x[/bold red]",
    ":smile: :thumbs_up:",
    "[link=http://example.com]y[/link]",
    "\udcff\udc80 surrogates",
    "\x00\x01\x1b[31mred\x1b[0m\r\b\x7f",
    "x" * 3000,
    "]]><!-- -->",
    "<script>alert(1)</script>",
    "&amp; &lt; \"'",
    "%0A::error::injected%",
    "line one\nline two\r\n",
    "\u202eright-to-left\u2028\u2029",
    "😀 non-BMP",
    "",
    "  padded  ",
    "{} {0} %s %(x)s",
    "C:\\path\\to\\file.py",
]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(HOSTILE_TEXT) for _ in range(rng.randint(1, 3)))


def _hostile_result(rng: random.Random) -> CheckResult:
    base = sample_result()
    findings = []
    for finding in base.findings:
        groups = []
        for retainer in finding.retainers:
            group = retainer.to_json()
            for key in ("root_name", "note", "known", "alloc_site"):
                if rng.random() < 0.7:
                    group[key] = _text(rng)
            group["chain"] = [
                {**edge, "label": _text(rng), "node": _text(rng)} for edge in group.get("chain", ())
            ]
            groups.append(RetainerGroup.from_json(group))
        findings.append(
            dataclasses.replace(
                finding,
                message=_text(rng),
                advice=_text(rng),
                retainers=tuple(groups),
            )
        )
    phases = tuple(dataclasses.replace(p, name=_text(rng)) for p in base.phases)
    return dataclasses.replace(
        base,
        findings=tuple(findings),
        phases=phases,
        notices=tuple(_text(rng) for _ in range(3)),
    )


def _render_everything(result: CheckResult, tmp_path: Path, title: str) -> None:
    for verbosity in (0, 1, 2):
        buffer = io.StringIO()
        TerminalReport(result, verbosity=verbosity).render(buffer)
        text = buffer.getvalue()
        assert text.strip()
        assert not [line for line in text.splitlines() if line != line.rstrip(" ")]
    render_terminal(result, plain_console(io.StringIO(), width=40), verbosity=2)
    data = json.loads(_rendered(JsonReport(result, script=title)))
    assert data["leaked"] == result.leaked
    html = _rendered(HtmlReport(result, title=title))
    assert "<script>alert" not in html
    ET.fromstring(_rendered(JunitReport(result, suite=title)).encode("utf-8"))  # valid XML
    commands = _rendered(GithubReport(result, main_file=title, verbosity=2))
    for line in commands.rstrip("\n").split("\n"):  # the runner reads one command a line
        assert line.startswith("::"), line
    _rendered(compare(result, result, tolerance=0))
    name = os.fsdecode(b"report-\xff\xfe")  # a file name that is not UTF-8
    for renderer, suffix in (
        (HtmlReport(result, title=title), ".html"),
        (JunitReport(result), ".xml"),
    ):
        target = write_report(renderer, tmp_path / (name + suffix))
        assert target.stat().st_size > 0


def _rendered(renderer: Any) -> str:
    buffer = io.StringIO()
    renderer.render(buffer)
    return buffer.getvalue().encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.mark.parametrize("case", range(12))
def test_hostile_strings_through_every_renderer(case: int, tmp_path: Path) -> None:
    rng = random.Random(SEED + case)
    _render_everything(_hostile_result(rng), tmp_path, _text(rng))


# -- hostile heap objects holding real leaks -------------------------------------------------


class Raising:
    """Every dunder the analysis might touch raises."""

    def __init__(self, payload: Any) -> None:
        object.__setattr__(self, "payload", payload)

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __len__(self) -> int:
        raise RuntimeError("len")

    def __bool__(self) -> bool:
        raise RuntimeError("bool")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"getattr {name}")

    @property
    def __class__(self) -> type:  # type: ignore[override]
        raise RuntimeError("__class__")


class Noisy(torch.Tensor):
    def __repr__(self) -> str:
        raise RuntimeError("tensor repr")


def _holders(rng: random.Random) -> dict[str, Any]:
    def tensor() -> torch.Tensor:
        return torch.ones(rng.randint(1, 4) << 18)

    recursive: list[Any] = [tensor()]
    recursive.append(recursive)
    deep: Any = tensor()
    for _ in range(rng.randint(500, 3000)):
        deep = [deep]
    huge = {i: i for i in range(50_000)}
    huge[-1] = tensor()
    return {
        "raising": Raising(tensor()),
        "recursive": recursive,
        "deep": deep,
        "huge": huge,
        _text(rng): {_text(rng): tensor()},
        "noisy": tensor().as_subclass(Noisy),
        "cycle": (lambda d: (d.__setitem__("self", d), d)[1])({"t": tensor()}),
    }


KEPT: dict[str, Any] = {}


@pytest.mark.parametrize("case", range(3))
def test_hostile_heap_objects_through_analysis_and_renderers(case: int, tmp_path: Path) -> None:
    rng = random.Random(SEED * 7 + case)
    with memdiag.track(device="cpu", settle=0) as tracker:
        memdiag.phase(rng.choice([_text(rng), 3, None, b"\xff"]))  # type: ignore[arg-type]
        KEPT.update(_holders(rng))
    try:
        result = tracker.result
        assert result is not None and result.leaked, result and result.summary()
        assert all(isinstance(p.name, str) for p in result.phases)
        _render_everything(result, tmp_path, _text(rng))
    finally:
        KEPT.clear()


# -- hostile report files --------------------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.extend(_paths(value, (*prefix, index)))
    return out


def _hostile_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            "lots",
            -1,
            2**70,
            1e308,
            float("nan"),
            None,
            True,
            [],
            {},
            [[[[[]]]]],
            {"nested": {"deeper": [1, "x", None]}},
            _text(rng),
            12345678901234567890,
        ]
    )


def _mutate(data: dict[str, Any], rng: random.Random) -> str:
    """One random mutation; returns the file's text."""
    kind = rng.random()
    if kind < 0.05:
        return "[" * 100_000 + "]" * 100_000  # deeper than any parser's stack
    if kind < 0.1:
        return json.dumps(data)[: rng.randint(0, 2000)]  # truncated
    target = rng.choice(_paths(data)[1:])
    parent: Any = data
    for key in target[:-1]:
        parent = parent[key]
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[target[-1]]
    else:
        parent[target[-1]] = _hostile_value(rng)
    return json.dumps(data)


def test_random_report_mutations_never_crash_report_merge_or_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED)
    good = tmp_path / "good.json"
    write_json(sample_result(), good, script="engine.py")
    original = json.loads(good.read_text())
    seen: set[int] = set()
    for case in range(60):
        path = tmp_path / f"m{case}.json"
        text = _mutate(copy.deepcopy(original), rng)
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        for argv in (
            ["report", str(path)],
            [
                "report",
                "-q",
                "--html",
                str(tmp_path / "o.html"),
                "--junit",
                str(tmp_path / "o.xml"),
                str(path),
            ],
            ["merge", str(path)],
            ["compare", str(good), str(path)],
        ):
            code = main(argv)
            _out, err = capsys.readouterr()
            seen.add(code)
            assert code in (0, 1, 2), (argv, text[:300], err[-2000:])
            assert "internal error" not in err and "Traceback" not in err, err[-2000:]
            if code == 2:
                assert err.startswith("memdiag: "), err
    assert 2 in seen and 1 in seen  # some mutations break the report, some are harmless
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["report", str(tmp_path / "bin.json")]) == 2
    assert "not UTF-8" in capsys.readouterr().err

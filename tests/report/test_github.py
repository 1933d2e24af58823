"""GitHub Actions annotations: escaped workflow commands pointing at the leak's source."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from memdiag.cli import main
from memdiag.report.github import Annotation, GithubReport, annotations_for, in_github_actions
from memdiag.values.retainers import RetainerGroup
from tests.report.sample import sample_result


def test_only_in_github_actions() -> None:
    assert in_github_actions({"GITHUB_ACTIONS": "true"})
    assert not in_github_actions({"CI": "true"})
    assert not in_github_actions({})


def test_commands_escape_data_and_properties() -> None:
    item = Annotation("error", "a: b, c", "50% of it\nnext line", file="a,b.py", line=3)
    assert (
        item.command() == "::error file=a%2Cb.py,line=3,title=a%3A b%2C c::50%25 of it%0Anext line"
    )
    assert Annotation("notice", "t", "m").command() == "::notice title=t::m"


def test_an_error_per_retainer_group_and_a_notice_per_note(tmp_path: Path) -> None:
    items = annotations_for(sample_result(), workspace=tmp_path, verbosity=2)
    errors = [a for a in items if a.level == "error"]
    notices = [a for a in items if a.level == "notice"]
    # 4 retainer groups of the live tensors, 1 gc-frozen group, 5 leaks without groups
    assert len(errors) == 10 and len(notices) == 4
    top = errors[0]
    assert (top.file, top.line) == ("engine/model.py", 88)
    assert top.title == (
        "memdiag: 768.0 MiB leaked on cuda:0 (live tensors) "
        "by lru_cache of engine.utils.supports_kw"
    )
    assert "kept alive by lru_cache of engine.utils.supports_kw -> cache key" in top.message
    assert "Fix: call `supports_kw.cache_clear()` in shutdown" in top.message
    assert all(a.file is None for a in errors[1:])  # no allocation site, module not found
    assert notices[0].title == "memdiag: 1.0 GiB allocator cache on cuda:0"


def test_trimmed_by_verbosity() -> None:
    quiet = annotations_for(sample_result(), verbosity=0)
    assert len([a for a in quiet if a.level == "error"]) == 9  # top 3 groups of 4


def test_paths_are_relative_to_the_workspace(tmp_path: Path) -> None:
    script = tmp_path / "engines" / "toy.py"
    script.parent.mkdir()
    script.write_text("import torch\n\n_ROPE_DICT = {}\n")
    result = sample_result()
    finding = result.findings[0].with_retainers(
        (
            RetainerGroup.from_json(
                {"root_kind": "module", "root_name": "__main__._ROPE_DICT", "retained_bytes": 4}
            ),
        )
    )
    result = dataclasses.replace(result, findings=(finding,))
    buffer = io.StringIO()
    GithubReport(result, main_file=str(script), workspace=tmp_path).render(buffer)
    assert buffer.getvalue().startswith("::error file=engines/toy.py,line=3,title=memdiag%3A")
    assert "(at _ROPE_DICT =)%0AFix: release `_ROPE_DICT` in shutdown" in buffer.getvalue()


def test_run_and_report_print_annotations_in_github_actions(
    toy_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    toy = Path(__file__).resolve().parents[2] / "examples" / "toy_engine.py"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(toy.parents[1]))
    assert main(["report", "-q", str(toy_runs["lru_cache"])]) == 1
    line = capsys.readouterr().out.strip()
    source = toy.read_text().splitlines()
    assert line.startswith("::error file=examples/toy_engine.py,line=")
    number = int(line.split("line=")[1].split(",")[0])
    assert source[number - 1].startswith("def supports_kw(")
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    assert main(["report", "-q", str(toy_runs["lru_cache"])]) == 1
    assert capsys.readouterr().out == ""

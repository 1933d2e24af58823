"""HTML report: self-contained, a timeline per device, collapsible retainer trees;
rendered in headless Chromium when it is installed."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from memdiag.report.base import write_report
from memdiag.report.html import HtmlReport
from memdiag.report.json_report import load_json
from tests.report.sample import sample_result


def _html() -> str:
    buffer = io.StringIO()
    HtmlReport(sample_result(), title="engine.py").render(buffer)
    return buffer.getvalue()


def test_one_chart_per_series_group_and_device() -> None:
    html = _html()
    assert html.count("<svg") == 4  # allocator and driver chart for each of 2 devices
    for series in ("allocated", "reserved", "driver_used", "process_used"):
        assert html.count(f'data-series="{series}"') == 2
    assert "<title>infer: peak: allocated 3.5 GiB (3758096384 bytes)</title>" in html
    assert "leak threshold" in html


def test_findings_and_retainer_tree_are_collapsible_and_escaped() -> None:
    html = _html()
    assert html.count("<details class='finding leak' open>") == 7
    assert html.count("<details class='finding note'>") == 4
    assert "<code>lru_cache of engine.utils.supports_kw</code>" in html
    assert "engine.rope._ROPE_DICT -&gt; [(4096, 128)][0]" in html
    assert "class='suspect'><code>cache key -&gt; bound method Model.forward</code>" in html
    assert "allocated at <code>engine/model.py:88 in Model.__init__</code>" in html
    assert "fix: call <code>supports_kw.cache_clear()</code> in shutdown" in html
    assert html.count("cache_clear()") == 1  # the top group repeats not the finding's fix


def test_self_contained_nothing_is_fetched() -> None:
    html = _html()
    assert not re.search(r"(src|href)\s*=", html)
    assert "url(" not in html and "@import" not in html and "<link" not in html
    assert "<script type='application/json' id='memdiag-report'>" in html
    assert html.count("<script") == 1


def test_embedded_json_cannot_close_its_script_element() -> None:
    result = sample_result()
    buffer = io.StringIO()
    HtmlReport(result, note="</script><b>x</b>").render(buffer)
    assert "</script><b>" not in buffer.getvalue()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(*args: str) -> subprocess.CompletedProcess[str]:
    chromium = _chromium()
    assert chromium is not None
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_renders_in_headless_chromium(tmp_path: Path, toy_runs: dict[str, Path]) -> None:
    page = write_report(HtmlReport(sample_result(), title="engine.py"), tmp_path / "r.html")
    dom = _browser("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    assert dom.stdout.count("<svg") == 4
    assert "lru_cache of engine.utils.supports_kw" in dom.stdout
    assert "polyline" in dom.stdout
    shot = tmp_path / "r.png"
    done = _browser(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    assert done.returncode == 0, done.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    real = toy_runs["lru_cache"].with_suffix(".html")
    dom = _browser("--dump-dom", real.as_uri())
    assert "lru_cache of __main__.supports_kw" in dom.stdout and "<svg" in dom.stdout


def test_real_run_html_has_the_chart_and_the_top_retainer(toy_runs: dict[str, Path]) -> None:
    html = toy_runs["lru_cache"].with_suffix(".html").read_text()
    assert "<svg" in html and 'data-series="allocated"' in html
    assert "<code>lru_cache of __main__.supports_kw</code>" in html
    assert load_json(toy_runs["lru_cache"]).leaked

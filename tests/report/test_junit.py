"""JUnit XML: a test case per device, failed with the leak's text, notes on system-out."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

from memdiag.report.junit import JunitReport
from tests.report.sample import sample_result


def _root() -> ET.Element:
    buffer = io.StringIO()
    JunitReport(sample_result(), suite="engine").render(buffer)
    assert buffer.getvalue().startswith('<?xml version="1.0" encoding="utf-8"?>\n')
    return ET.fromstring(buffer.getvalue().split("\n", 1)[1])


def test_one_failed_case_per_leaking_device() -> None:
    root = _root()
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("engine", "2", "2")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "cuda:0: memory came back",
        "cuda:1: memory came back",
    ]
    assert {c.get("classname") for c in cases} == {"memdiag.engine"}
    failure = cases[0].find("failure")
    assert failure is not None and failure.get("type") == "live_tensors"
    assert failure.get("message", "").startswith("cuda:0: 773.5 MiB in 16 storages")
    text = failure.text or ""
    assert "LEAK 300.0 MiB outside PyTorch on cuda:0" in text
    assert "lru_cache of engine.utils.supports_kw -> cache key -> bound method" in text
    assert "note 1.0 GiB" not in text
    notes = cases[0].findtext("system-out") or ""
    assert "note 1.0 GiB allocator cache on cuda:0" in notes
    prop = suite.find("properties/property")
    assert (
        prop is not None and prop.get("value") == "allocation stacks were recorded for cuda:0 only"
    )


def test_real_runs_pass_and_fail(toy_runs: dict[str, Path]) -> None:
    leaky = ET.parse(toy_runs["lru_cache"].with_suffix(".xml")).getroot()
    fixed = ET.parse(toy_runs["fixed"].with_suffix(".xml")).getroot()
    assert leaky.get("failures") == "1" and fixed.get("failures") == "0"
    assert leaky.find("testsuite/testcase/failure") is not None
    assert fixed.find("testsuite/testcase/failure") is None
    assert leaky.find("testsuite") is not None
    assert leaky.find("testsuite").get("name") == "toy_engine"  # type: ignore[union-attr]

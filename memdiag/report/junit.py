"""JUnit XML report for CI systems: one test case per device, failed when the device
has a leak, with the findings as the failure's text (the same blocks the terminal
shows, as plain text) and the notes on ``system-out``."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import TextIO

from memdiag.report.console import plain_console, xml_text
from memdiag.report.facts import ordered_findings, tolerance_for
from memdiag.report.terminal import finding_block
from memdiag.values.findings import Finding
from memdiag.values.result import CheckResult

__all__ = ["JunitReport"]


def _plain(findings: list[Finding], verbosity: int, result: CheckResult) -> str:
    buffer = io.StringIO()
    console = plain_console(buffer, width=100, color_system=None)
    for finding in findings:
        tolerance = tolerance_for(result, finding.device)
        console.print(finding_block(finding, verbosity, tolerance=tolerance))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


class JunitReport:
    """One ``<testsuite>``; a ``<testcase>`` per device named ``<device>: memory came back``.

    ``suite`` names the suite and the test cases' ``classname`` (``memdiag.<suite>``),
    e.g. the script's name, so that CI systems group runs of one engine together."""

    def __init__(self, result: CheckResult, *, suite: str = "memdiag", verbosity: int = 1) -> None:
        self.result = result
        self.suite = suite
        self.verbosity = verbosity

    def tree(self) -> ET.ElementTree[ET.Element]:
        result = self.result
        findings = ordered_findings(result)
        devices = [d.device for d in result.devices] or ["(no device)"]
        failed = {f.device for f in findings if f.is_leak}
        elapsed = f"{result.elapsed_s:.3f}"
        root = ET.Element(
            "testsuites",
            name="memdiag",
            tests=str(len(devices)),
            failures=str(len(failed)),
            errors="0",
            time=elapsed,
        )
        suite = ET.SubElement(
            root,
            "testsuite",
            name=self.suite,
            tests=str(len(devices)),
            failures=str(len(failed)),
            errors="0",
            skipped="0",
            time=elapsed,
        )
        if result.notices:
            props = ET.SubElement(suite, "properties")
            for notice in result.notices:
                ET.SubElement(props, "property", name="notice", value=notice)
        for device in devices:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"memdiag.{self.suite}",
                name=f"{device}: memory came back",
                time=elapsed,
            )
            leaks = [f for f in findings if f.device == device and f.is_leak]
            notes = [f for f in findings if f.device == device and not f.is_leak]
            if leaks:
                top = leaks[0]
                failure = ET.SubElement(
                    case, "failure", message=top.headline(), type=top.kind.value
                )
                failure.text = _plain(leaks, self.verbosity, self.result)
            if notes:
                ET.SubElement(case, "system-out").text = _plain(notes, self.verbosity, self.result)
        for element in root.iter():  # user text may hold what XML 1.0 forbids
            element.text = None if element.text is None else xml_text(element.text)
            for key, value in element.attrib.items():
                element.attrib[key] = xml_text(value)
        ET.indent(root)
        return ET.ElementTree(root)

    def render(self, file: TextIO) -> None:
        file.write('<?xml version="1.0" encoding="utf-8"?>\n')
        self.tree().write(file, encoding="unicode")
        file.write("\n")

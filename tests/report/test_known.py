"""Known leaks and the per-test gate on fixed numbers: signatures, the file format,
the verdict with known leaks, and every kind of change between base and head."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

from memdiag.report.gate import Change, compare_sessions
from memdiag.report.known import (
    KnownLeaksError,
    LeakRecord,
    LeakSignature,
    apply_known,
    known_file_data,
    leak_records,
    leak_signature,
    load_known,
    parse_known,
)
from memdiag.report.markdown import gate_markdown, session_markdown
from memdiag.report.session import (
    DeviceNumbers,
    SessionReport,
    TestEntry,
    device_numbers,
    junit_properties,
    merge_sessions,
    session_entry,
)
from memdiag.values.findings import Finding, FindingKind
from memdiag.values.readings import DeviceReading
from memdiag.values.result import CheckResult, DeviceCheck, PhaseRecord
from memdiag.values.retainers import RetainerGroup
from tests.report.sample import LRU_GROUP, ROPE_GROUP

MiB = 1024**2


def _leak(nbytes: int, *groups: RetainerGroup, device: str = "cuda:0") -> Finding:
    return Finding(FindingKind.LIVE_TENSORS, device, nbytes, True, "live tensors", retainers=groups)


def _result(*findings: Finding, peak: int | None = None, end: int = 0) -> CheckResult:
    base = DeviceReading("cuda:0", allocated=100 * MiB, peak_allocated=100 * MiB)
    final = DeviceReading(
        "cuda:0",
        allocated=100 * MiB + end,
        peak_allocated=None if peak is None else 100 * MiB + peak,
    )
    phase = PhaseRecord(
        "infer", 0.0, 1.0, (DeviceReading("cuda:0", allocated=100 * MiB + 5 * MiB),)
    )
    return CheckResult(
        leaked=any(f.is_leak for f in findings),
        devices=(DeviceCheck("cuda:0", base, final, MiB, 256 * MiB),),
        phases=(phase,),
        findings=findings,
        cheap=not findings,
        settle_s=None,
        elapsed_s=0.1,
    )


def test_a_signature_of_any_heap_text_is_a_hash() -> None:
    group = dataclasses.replace(LRU_GROUP, signature="[/]\udcff")  # a non-UTF-8 file name
    sig = leak_signature(_leak(MiB, group), "t.py::test_a")
    assert len(sig.retainer) == 12


def test_signature_is_stable_and_readable() -> None:
    one = leak_signature(_leak(4 * MiB, LRU_GROUP, ROPE_GROUP), "t.py::test_a")
    moved = leak_signature(_leak(9 * MiB, ROPE_GROUP, LRU_GROUP, device="cuda:3"), "t.py::test_a")
    assert one == moved  # sizes, order of groups and the device index do not matter
    assert one.roots == ("lru_cache of engine.utils.supports_kw", "engine.rope._ROPE_DICT")
    assert (one.kind, one.device, len(one.retainer)) == ("live_tensors", "cuda", 12)
    assert leak_signature(_leak(MiB, LRU_GROUP), "t.py::test_a") != one
    assert leak_signature(_leak(MiB), "t.py::test_a").retainer == ""


def test_device_numbers_peak_end_and_leaked() -> None:
    result = _result(_leak(3 * MiB, LRU_GROUP), peak=12 * MiB, end=3 * MiB)
    (numbers,) = device_numbers(result)
    assert numbers == DeviceNumbers("cuda:0", 100 * MiB, 12 * MiB, True, 3 * MiB, 3 * MiB)
    # Without a peak counter: the highest phase-end or final reading, a lower bound.
    (cpu_like,) = device_numbers(_result(end=MiB))
    assert (cpu_like.peak, cpu_like.peak_exact) == (5 * MiB, False)


def _known(*entries: dict[str, Any], **top: Any) -> Any:
    return parse_known({"memdiag_known_leaks": 1, "leaks": list(entries), **top})


def test_apply_known_reports_within_and_fails_beyond_the_recorded_size() -> None:
    result = _result(_leak(4 * MiB, LRU_GROUP))
    sig = leak_signature(result.findings[0], "t.py::test_a").to_json()
    within = apply_known(
        result, _known({**sig, "bytes": "4MiB", "reason": "issue 7"}), test="t.py::test_a"
    )
    assert not within.leaked
    assert within.findings[0].message.startswith("known leak (issue 7), 4.0 MiB within")
    (record,) = leak_records(within, "t.py::test_a")
    assert (record.known, record.bytes, record.recorded) == (True, 4 * MiB, 4 * MiB)

    grown = apply_known(
        result, _known({**sig, "bytes": MiB}, tolerance="2MiB"), test="t.py::test_a"
    )
    assert grown.leaked
    assert grown.findings[0].message.startswith(
        "known leak grew: 4.0 MiB, recorded 1.0 MiB (tolerance 2.0 MiB)"
    )
    (record,) = leak_records(grown, "t.py::test_a")
    assert (record.known, record.recorded) == (False, MiB)
    # Another test, or no file: untouched.
    assert apply_known(result, _known({**sig, "bytes": MiB}), test="t.py::test_b") is result
    assert apply_known(result, None, test="t.py::test_a") is result


def test_globs_match_parametrized_tests() -> None:
    result = _result(_leak(4 * MiB, LRU_GROUP))
    sig = leak_signature(result.findings[0], "t.py::test_a[1]").to_json()
    known = _known({**sig, "test": "t.py::test_a[*]", "bytes": 4 * MiB})
    assert not apply_known(result, known, test="t.py::test_a[2]").leaked
    assert apply_known(result, known, test="t.py::test_b[2]").leaked


_ENTRY = (
    '{{"memdiag_known_leaks": 1, "leaks": [{{"test": "x", "kind": "k", "device": "cpu", '
    '"bytes": "4MiB"{extra}}}]}}'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "is not a memdiag known-leaks file"),
        ('{"memdiag_known_leaks": 1, "leaks": {}}', '"leaks" must be a list'),
        (
            '{"memdiag_known_leaks": 1, "leaks": [{"test": "x"}]}',
            "leaks[0] lacks kind, device, bytes",
        ),
        (
            '{"memdiag_known_leaks": 1, "leaks": [{"test": "x", "kind": "k", "device": "cpu", '
            '"bytes": "lots"}]}',
            "leaks[0] bytes: 'lots' is not a size",
        ),
        ("{nope", "is not JSON"),
        (_ENTRY.format(extra=', "roots": 3'), "leaks[0] roots: 3 is not a list of strings"),
        (_ENTRY.format(extra=', "roots": [1, null]'), "roots: [1, null] is not a list of str"),
        (_ENTRY.format(extra=', "reason": {"a": 1}'), 'reason: {"a": 1} is not a string'),
        (_ENTRY.format(extra="").replace('"x"', "5"), "leaks[0] test: 5 is not a string"),
        (_ENTRY.format(extra="").replace('"4MiB"', str(2**70)), "is more than 1.0 EiB"),
        (_ENTRY.format(extra="").replace('"4MiB"', "9" * 5000), "not a known-leaks file"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_known_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "known.json"
    path.write_text(text)
    with pytest.raises(KnownLeaksError, match=message.replace("[", r"\[")):
        load_known(path)
    with pytest.raises(KnownLeaksError, match="not found"):
        load_known(tmp_path / "missing.json")


def test_update_keeps_patterns_reasons_and_tolerances_and_drops_fixed_leaks() -> None:
    lru = LeakSignature("t.py::test_a[1]", "live_tensors", "cuda", "aaa", ("lru",))
    lru2 = LeakSignature("t.py::test_a[2]", "live_tensors", "cuda", "aaa", ("lru",))
    new = LeakSignature("t.py::test_b", "gc_frozen", "cpu", "", ())
    previous = _known(
        {
            **lru.to_json(),
            "test": "t.py::test_a[*]",
            "bytes": MiB,
            "reason": "upstream",
            "tolerance": 0,
        },
        {**LeakSignature("t.py::gone", "live_tensors", "cpu", "b", ()).to_json(), "bytes": 1},
    )
    out = known_file_data(
        [LeakRecord(lru, 2 * MiB), LeakRecord(lru2, 3 * MiB), LeakRecord(new, 5)], previous=previous
    )
    data = out.to_json()
    assert [e["test"] for e in data["leaks"]] == ["t.py::test_a[*]", "t.py::test_b"]
    glob, fresh = data["leaks"]
    assert (glob["bytes"], glob["reason"], glob["tolerance"]) == (3 * MiB, "upstream", 0)
    assert fresh["bytes"] == 5 and "tolerance" not in fresh and "reason" not in fresh
    assert parse_known(json.loads(json.dumps(data))) == out


def _entry(unit: str, *leaks: LeakRecord, peak: int | None = 0, end: int = 0) -> TestEntry:
    failing = [leak for leak in leaks if not leak.known]
    return TestEntry(
        nodeid=unit,
        unit=unit,
        scope="function",
        checked=True,
        leaked=bool(failing),
        bytes=sum(leak.bytes for leak in failing),
        devices=(DeviceNumbers("cuda:0", 0, peak, True, end, sum(x.bytes for x in failing)),),
        leaks=leaks,
    )


def _sig(test: str, retainer: str = "r1", roots: tuple[str, ...] = ("lru",)) -> LeakSignature:
    return LeakSignature(test, "live_tensors", "cuda", retainer, roots)


def test_gate_judges_every_kind_of_change() -> None:
    base = SessionReport(
        (
            _entry("t::still", LeakRecord(_sig("t::still"), 4 * MiB), peak=4 * MiB, end=4 * MiB),
            _entry("t::grew", LeakRecord(_sig("t::grew"), 4 * MiB), peak=4 * MiB, end=4 * MiB),
            _entry("t::moved", LeakRecord(_sig("t::moved", "r1"), 4 * MiB)),
            _entry("t::fixed", LeakRecord(_sig("t::fixed"), 2 * MiB)),
            _entry("t::peak", peak=100 * MiB),
            _entry("t::small_peak", peak=100 * MiB),
            _entry("t::removed"),
        ),
        settings="a",
    )
    head = SessionReport(
        (
            _entry(
                "t::still", LeakRecord(_sig("t::still"), 4 * MiB + 10), peak=4 * MiB, end=4 * MiB
            ),
            _entry("t::grew", LeakRecord(_sig("t::grew"), 8 * MiB), peak=8 * MiB, end=8 * MiB),
            _entry("t::moved", LeakRecord(_sig("t::moved", "r2", ("dict",)), 4 * MiB)),
            _entry("t::fixed"),
            _entry("t::peak", peak=120 * MiB),
            _entry("t::small_peak", peak=105 * MiB),
            _entry("t::new", LeakRecord(_sig("t::new"), MiB)),
            _entry("t::known", LeakRecord(_sig("t::known"), MiB, known=True, recorded=MiB)),
        ),
        settings="b",
    )
    gate = compare_sessions(base, head, tolerance=MiB, peak_tolerance=MiB, peak_percent=10)
    changes = {(c.test, c.change) for c in gate.changes}
    assert changes == {
        ("t::still", Change.STILL_LEAKING),
        ("t::grew", Change.LEAK_GREW),
        ("t::moved", Change.STILL_LEAKING),
        ("t::fixed", Change.FIXED),
        ("t::peak", Change.PEAK_GREW),
        ("t::new", Change.NEW_LEAK),
        ("t::known", Change.KNOWN),
    }
    # Regressions first, biggest impact first; the grown leak's peak is not counted twice.
    assert [(c.test, c.change) for c in gate.regressions] == [
        ("t::peak", Change.PEAK_GREW),
        ("t::grew", Change.LEAK_GREW),
        ("t::new", Change.NEW_LEAK),
    ]
    assert gate.verdict() == "FAIL: 3 regressions in head: 1 new leak, 1 leak grew, 1 peak grew"
    moved = next(c for c in gate.changes if c.test == "t::moved")
    assert moved.detail == "held by dict (base: lru)"
    assert gate.notes == (
        "1 test only in base (removed or not run): t::removed",
        "2 tests only in head (new): t::known, t::new",
        "settings differ: base 'a', head 'b'",
    )
    out = io.StringIO()
    gate.render(out)
    assert (
        "regression: t::peak: peak on cuda:0 grew 100.0 MiB -> 120.0 MiB over baseline"
        in out.getvalue()
    )
    text = gate_markdown(gate)
    assert (
        "<details><summary>Not regressions: 2 still leaking, 1 known leak, 1 stopped leaking"
        in text
    )
    # A known-leaks file given to compare re-judges head's leaks.
    known = _known({**_sig("t::new").to_json(), "bytes": MiB})
    rejudged = compare_sessions(
        base, head, tolerance=MiB, peak_tolerance=MiB, peak_percent=10, known=known
    )
    assert ("t::new", Change.KNOWN) in {(c.test, c.change) for c in rejudged.changes}


def test_entries_properties_legacy_reports_and_merge() -> None:
    result = _result(_leak(3 * MiB, LRU_GROUP), peak=12 * MiB, end=3 * MiB)
    entry = session_entry(result, nodeid="t.py::a", unit="t.py::a", scope="function")
    assert dict(junit_properties(entry)) | {"memdiag_summary": ""} == {
        "memdiag_leaked": "true",
        "memdiag_bytes": str(3 * MiB),
        "memdiag_summary": "",
        "memdiag_cuda:0_peak_bytes": str(12 * MiB),
        "memdiag_cuda:0_end_bytes": str(3 * MiB),
        "memdiag_cuda:0_leaked_bytes": str(3 * MiB),
    }
    assert TestEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    # A report of memdiag 0.1 (memdiag-pytest/1): the numbers come from the results.
    legacy = {
        "schema": "memdiag-pytest/1",
        "tests": [
            {"nodeid": "t.py::a", "leaked": True, "bytes": 3 * MiB, "result": result.to_json()}
        ],
    }
    (old,) = SessionReport.from_json(legacy).tests
    assert (old.devices, old.leaks) == (entry.devices, entry.leaks)
    one = SessionReport((entry,), settings="s")
    two = SessionReport((_entry("t.py::b"), entry), settings="s")
    merged = merge_sessions([("one.json", one), ("two.json", two)])
    assert [e.nodeid for e in merged.tests] == ["t.py::a", "t.py::b"]
    assert merged.notices == ("t.py::a is in one.json and two.json; kept two.json's",)
    assert "| `t.py::a` | cuda:0 | 3.0 MiB |" in session_markdown(merged)

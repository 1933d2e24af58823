"""Markers, options, ini keys, ``--help``, usage errors and JUnit XML.

These runs use ``--gpu-leak-device=fake`` (memdiag's scripted backend, reached through
the ``gpu_leak_tracker`` fixture): its memory is numbers, not tensors, so the runs can
stay in this process."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

FAKE = """
import time
import pytest

MiB = 1024 ** 2

def fake(tracker):
    return tracker.selection.backends[0]

def free(backend, nbytes):
    state = backend.snapshot("fake:0")
    backend.set("fake:0", allocated=state.allocated - nbytes, reserved=state.reserved - nbytes,
                driver_used=state.driver_used - nbytes)
"""

MARKERS = (
    FAKE
    + """
def test_fake_leak(gpu_leak_tracker):
    fake(gpu_leak_tracker).allocate("fake:0", 8 * MiB)

@pytest.mark.gpu_leak_check(tolerance="16MiB")
def test_within_marker_tolerance(gpu_leak_tracker):
    fake(gpu_leak_tracker).allocate("fake:0", 8 * MiB)

@pytest.mark.gpu_leak_check(settle=30)
def test_lazy_release_is_waited_for(gpu_leak_tracker):
    backend = fake(gpu_leak_tracker)
    backend.allocate("fake:0", 64 * MiB)
    backend.release_later("fake:0", 64 * MiB, delay=0.3)  # as ROCm does after shutdown

@pytest.mark.gpu_leak_check(settle=0)
def test_lazy_release_not_waited_for(gpu_leak_tracker):
    backend = fake(gpu_leak_tracker)
    backend.allocate("fake:0", 64 * MiB)
    backend.release_later("fake:0", 64 * MiB, delay=600)

@pytest.mark.gpu_leak_check(max_peak="100MiB")
def test_peak_over_budget(gpu_leak_tracker):
    backend = fake(gpu_leak_tracker)
    with gpu_leak_tracker.phase("resize"):
        backend.allocate("fake:0", 128 * MiB)  # old and new buffer resident together
        free(backend, 128 * MiB)

@pytest.mark.gpu_leak_check(max_peak="1GiB")
def test_peak_within_budget(gpu_leak_tracker):
    backend = fake(gpu_leak_tracker)
    backend.allocate("fake:0", 128 * MiB)
    free(backend, 128 * MiB)

@pytest.mark.no_gpu_leak_check(reason="known")
def test_opted_out(gpu_leak_tracker):
    assert not gpu_leak_tracker.enabled
"""
)


def test_markers_tune_one_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marks=MARKERS)
    result = pytester.runpytest("--gpu-leak-check", "--gpu-leak-device=fake", "-rA")
    result.assert_outcomes(passed=4, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_marks.py::test_fake_leak - memdiag: fake:0: 8.0 MiB over baseline "
            "(tolerance 1.0 MiB), allocated memory held by no Python tensor*",
            "FAILED test_marks.py::test_lazy_release_not_waited_for - memdiag: fake:0: 64.0 MiB*",
            "FAILED test_marks.py::test_peak_over_budget - memdiag: fake:0: peak in phase "
            "'resize' was 128.0 MiB over baseline, above the max_peak budget of 100.0 MiB",
            "PASSED test_marks.py::test_within_marker_tolerance",
            "PASSED test_marks.py::test_lazy_release_is_waited_for",
            "PASSED test_marks.py::test_peak_within_budget",
            "PASSED test_marks.py::test_opted_out",
        ]
    )
    result.stdout.fnmatch_lines(["*over budget  test_marks.py::test_peak_over_budget: *"])


def test_max_peak_on_cpu_says_it_sees_phase_ends_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_cpu_peak="""
import pytest
import torch

@pytest.mark.gpu_leak_check(max_peak="1MiB")
def test_peak_inside_one_phase():
    buffer = torch.ones(16 << 20, dtype=torch.uint8)  # 16 MiB, freed before the phase ends
    del buffer

@pytest.mark.gpu_leak_check(max_peak="1MiB")
def test_second():
    pass
"""
    )
    result = pytester.runpytest("--gpu-leak-check", "--gpu-leak-device=cpu", "-W", "default")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*MemdiagWarning: max_peak on cpu: CPU tensors have no peak counter, so the budget "
            "is compared with the memory at each phase end*",
            "memdiag: checked 2 tests (cpu; *): 2 clean, 0 leaking",
        ]
    )


def test_marker_opts_in_without_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ngpu_leak_device = fake\n")
    pytester.makepyfile(
        test_optin=FAKE
        + """
@pytest.mark.gpu_leak_check
def test_marked_leak(gpu_leak_tracker):
    fake(gpu_leak_tracker).allocate("fake:0", 8 * MiB)

def test_unmarked(gpu_leak_tracker):
    assert not gpu_leak_tracker.enabled
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "memdiag: checked 1 test (fake:0; function scope, marked tests only): "
            "0 clean, 1 leaking",
            "FAILED test_optin.py::test_marked_leak - memdiag: fake:0: 8.0 MiB over baseline*",
        ]
    )


def test_ini_options_mirror_the_flags(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\n"
        "gpu_leak_check = true\n"
        "gpu_leak_device = fake\n"
        "gpu_leak_tolerance = 32MiB\n"
        "gpu_leak_settle = 0\n"
    )
    pytester.makepyfile(
        test_ini=FAKE
        + """
def test_small(gpu_leak_tracker):
    fake(gpu_leak_tracker).allocate("fake:0", 16 * MiB)

def test_big(gpu_leak_tracker):
    fake(gpu_leak_tracker).allocate("fake:0", 64 * MiB)
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "memdiag: leak check on fake:0; function scope, tolerance 32.0 MiB, settle 0 s",
            "FAILED test_ini.py::test_big - memdiag: fake:0: 64.0 MiB over baseline "
            "(tolerance 32.0 MiB)*",
        ]
    )
    # The command line wins over the ini file.
    result = pytester.runpytest("--gpu-leak-tolerance=128MiB")
    result.assert_outcomes(passed=2)


def test_bad_marker_arguments_fail_the_test_saying_why(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.gpu_leak_check(tolerance="lots")
def test_bad_tolerance():
    pass

@pytest.mark.gpu_leak_check(max_peak="1GiB", budget=3)
def test_unknown_argument():
    pass
"""
    )
    result = pytester.runpytest("--gpu-leak-device=fake")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "*@pytest.mark.gpu_leak_check(tolerance='lots'): 'lots' is not a size*accepted*",
            "*@pytest.mark.gpu_leak_check*unexpected keyword argument 'budget'*",
        ]
    )


def test_help_lists_options_and_markers(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "GPU memory leak check (memdiag):",
            "  --gpu-leak-check*fail every test that leaves device memory allocated*",
            "  --gpu-leak-device=SPEC*",
            "  --gpu-leak-tolerance=*DEVICE=*SIZE|PCT%*",
            "  --gpu-leak-settle=SECONDS*",
            "  --gpu-leak-scope=SCOPE*",
            "  --gpu-leak-alloc-stacks*",
            "  --gpu-leak-isolate=MODE",
            "*run each test in a process of its own: fork (a child forked from pytest; *",
            "  --gpu-leak-json=PATH*",
        ]
    )
    # Every option has help text (a line of its own text after the flag).
    from memdiag_pytest.options import OPTIONS

    text = " ".join(result.stdout.str().split())
    for option in OPTIONS:
        assert option.flag in text
        assert " ".join(option.help.split()) in text, option.name
    result.stdout.fnmatch_lines(["  gpu_leak_check (bool):*", "  gpu_leak_scope (string):*"])
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.gpu_leak_check(*, tolerance: str | int | None = None, settle: float "
            "| None = None, max_peak: str | int | None = None): check this test*",
            "@pytest.mark.no_gpu_leak_check(*, reason: str = ''): do not check this test*",
        ]
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "--gpu-leak-scope=class",
            "*--gpu-leak-scope / gpu_leak_scope 'class' is not a scope; accepted: function, "
            "module, session*",
        ),
        (
            "--gpu-leak-tolerance=lots",
            "*--gpu-leak-tolerance / gpu_leak_tolerance 'lots': * accepted: SIZE, PCT% or "
            "DEVICE=SIZE*",
        ),
        (
            "--gpu-leak-settle=-1",
            "*--gpu-leak-settle / gpu_leak_settle '-1' is not a number of seconds; accepted*",
        ),
        ("--gpu-leak-device=nope", "*--gpu-leak-device / gpu_leak_device 'nope': *accepted: auto*"),
        ("--gpu-leak-json=/no/such/dir/r.json", "*gpu_leak_json*does not exist; accepted*"),
        (
            "--gpu-leak-isolate=thread",
            "*--gpu-leak-isolate / gpu_leak_isolate 'thread' is not a mode; accepted: none, "
            "fork, spawn",
        ),
        (
            "--gpu-leak-isolate=fork --gpu-leak-scope=module",
            "*--gpu-leak-isolate=fork runs each test in a process of its own, so a "
            "module-scoped check cannot see the tests of its scope together; use "
            "--gpu-leak-scope=function*",
        ),
    ],
)
def test_bad_values_are_usage_errors(pytester: pytest.Pytester, option: str, message: str) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--gpu-leak-check", *option.split())
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_junit_xml_has_the_properties(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_junit_props=FAKE
        + """
def test_leak(gpu_leak_tracker):
    fake(gpu_leak_tracker).allocate("fake:0", 8 * MiB)

def test_clean(gpu_leak_tracker):
    pass
"""
    )
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest("--gpu-leak-check", "--gpu-leak-device=fake", f"--junitxml={xml}")
    result.assert_outcomes(passed=1, failed=1)
    cases = {case.get("name"): case for case in ET.parse(xml).getroot().iter("testcase")}
    leak = {p.get("name"): p.get("value") for p in cases["test_leak"].iter("property")}
    clean = {p.get("name"): p.get("value") for p in cases["test_clean"].iter("property")}
    assert leak["memdiag_leaked"] == "true"
    assert leak["memdiag_bytes"] == str(8 * 1024**2)
    assert leak["memdiag_summary"].startswith("memdiag: fake:0: 8.0 MiB over baseline")
    assert (clean["memdiag_leaked"], clean["memdiag_bytes"]) == ("false", "0")
    # "within tolerance", or "back within tolerance after settling N s" when a stray
    # child process made the check wait; with the numbers either way
    assert clean["memdiag_summary"].startswith("memory ")
    assert "within tolerance" in clean["memdiag_summary"]
    assert clean["memdiag_summary"].endswith(
        "fake:0 0 B allocated since baseline (tolerance 1.0 MiB)"
    )
    failure = cases["test_leak"].find("failure")
    assert failure is not None
    assert failure.get("message", "").startswith("memdiag: fake:0: 8.0 MiB over baseline")


def test_an_option_without_the_check_is_a_warning(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--gpu-leak-settle=3", "--gpu-leak-isolate=spawn")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*MemdiagWarning: --gpu-leak-settle, --gpu-leak-isolate given, but the leak check "
            "is off (no --gpu-leak-check, no gpu_leak_check ini value, no test marked "
            "gpu_leak_check), so nothing is checked; add --gpu-leak-check",
        ]
    )
    # Not when a marked test turns the check on: the options apply to it.
    pytester.makepyfile("import pytest\n@pytest.mark.gpu_leak_check\ndef test_marked(): pass\n")
    result = pytester.runpytest("--gpu-leak-settle=3", "--gpu-leak-device=fake")
    result.assert_outcomes(passed=1)
    assert "MemdiagWarning" not in result.stdout.str()


def test_marker_settle_nan_and_inf_are_rejected(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpu_leak_check(settle=float("nan"))
        def test_nan():
            pass

        @pytest.mark.gpu_leak_check(settle=float("inf"))
        def test_inf():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--gpu-leak-check", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*settle=nan*not a number of seconds*"])
    result.stdout.fnmatch_lines(["*settle=inf*not a number of seconds*"])
    pytester.makeini("[pytest]\ngpu_leak_settle = inf\n")
    result = pytester.runpytest_subprocess("--gpu-leak-check", "-p", "no:cacheprovider")
    assert result.ret == 4  # pytest.UsageError
    result.stderr.fnmatch_lines(["*inf* is not a number of seconds*"])

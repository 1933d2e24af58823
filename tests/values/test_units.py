from __future__ import annotations

import pytest

from memdiag.values.units import Tolerance, format_bytes, parse_size, parse_tolerance, plural


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (64 * 1024**2, "64.0 MiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_format_bytes_signed() -> None:
    assert format_bytes(1024, signed=True) == "+1.0 KiB"


@pytest.mark.parametrize(
    ("text", "n"),
    [("16MiB", 16 * 1024**2), ("1.5 GiB", int(1.5 * 1024**3)), ("100", 100), ("2kb", 2000)],
)
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "abc", "12 parsecs", "-5MiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_tolerance_takes_the_larger_of_bytes_and_percent() -> None:
    tol = parse_tolerance("16MiB,1%")
    assert tol == Tolerance(bytes=16 * 1024**2, percent=1.0)
    assert tol.allowance(80 * 1024**3) == int(80 * 1024**3 / 100)
    assert tol.allowance(None) == 16 * 1024**2
    assert tol.allowance(1024**3) == 16 * 1024**2


@pytest.mark.parametrize("text", ["150%", "x%", " "])
def test_tolerance_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tolerance(text)


def test_tolerance_lists_per_device() -> None:
    from memdiag.values.units import describe_tolerances, parse_tolerances

    parsed = parse_tolerances(["16MiB", "cuda:1=64MiB", "cuda:2=0.5%"])
    assert parsed == {
        "*": Tolerance(bytes=16 * 1024**2),
        "cuda:1": Tolerance(bytes=64 * 1024**2),
        "cuda:2": Tolerance(bytes=0, percent=0.5),
    }
    assert describe_tolerances(parsed, Tolerance()) == (
        "16.0 MiB, cuda:1=64.0 MiB, cuda:2=0 B or 0.5% of device"
    )
    assert describe_tolerances(None, Tolerance(bytes=1024**2)) == "1.0 MiB"
    with pytest.raises(ValueError, match=r"'cuda:1=lots': .*accepted: SIZE, PCT% or DEVICE=SIZE"):
        parse_tolerances(["cuda:1=lots"])
    assert parse_tolerance(4096) == Tolerance(bytes=4096)  # an int is bytes (marker arguments)


@pytest.mark.parametrize(
    ("count", "word", "expected"),
    [
        (0, "leak", "0 leaks"),
        (1, "leak", "1 leak"),
        (1, "storage", "1 storage"),
        (2, "tensor", "2 tensors"),
    ],
)
def test_counts_agree_with_their_nouns(count: int, word: str, expected: str) -> None:
    assert plural(count, word) == expected

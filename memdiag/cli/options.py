"""Options shared by subcommands, parsed into library values with clear errors."""

from __future__ import annotations

import argparse

from memdiag.cli.errors import CliError
from memdiag.units import Tolerance, parse_tolerance

__all__ = ["add_check_options", "tolerances_from"]


def add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (every accelerator, else CPU tensors), cpu, cuda, or cuda:0,cuda:1",
    )
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="[DEVICE=]SIZE|PCT%",
        help="growth allowed per device, e.g. 16MiB, 0.5%%, cuda:1=64MiB (repeatable; "
        "default 1 MiB)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how long to poll for memory to come back before classifying (default 1.0; "
        "use ~10 on ROCm, which releases VRAM lazily)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument(
        "--alloc-stacks",
        action="store_true",
        help="record allocation stacks (CUDA memory history) to show where leaked "
        "tensors were allocated",
    )
    parser.add_argument(
        "--no-analysis", action="store_true", help="skip the retainer analysis on a leak"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="show more detail")


def tolerances_from(values: list[str]) -> dict[str, Tolerance] | None:
    if not values:
        return None
    result: dict[str, Tolerance] = {}
    for value in values:
        device, sep, amount = value.rpartition("=")
        try:
            result[device if sep else "*"] = parse_tolerance(amount)
        except ValueError as exc:
            raise CliError(f"--tolerance {value!r}: {exc}") from None
    return result

"""From a :class:`CheckResult` to the failure pytest shows: message, long repr, section.

Imported only when the leak check is active (it imports memdiag and rich).  The text
itself comes from the library (:mod:`memdiag.report.summary`, :mod:`memdiag.check.peaks`);
this module only lays it out for pytest.
"""

from __future__ import annotations

from collections.abc import Sequence

from memdiag.check.peaks import PeakViolation
from memdiag.report.summary import finding_lines, leak_line, render_text
from memdiag.values.result import CheckResult

from .failure import SECTION, LeakFailure

__all__ = ["build_failure"]


def build_failure(
    result: CheckResult | None,
    peaks: Sequence[PeakViolation],
    *,
    blame: str,
    width: int,
    verbosity: int,
) -> LeakFailure | None:
    """The failure for a leak and/or peak over budget, or ``None`` when both are fine.

    ``blame`` says what is checked ("the test", "module-scoped fixtures engine of ...").
    """
    leaked = result is not None and result.leaked
    if not leaked and not peaks:
        return None
    lines: list[str] = []
    if leaked:
        assert result is not None
        message = f"memdiag: {leak_line(result)} after {blame}"
        lines.append(message)
        lines.extend(
            f"  {line}"
            for line in finding_lines(
                result.leaks, groups=3 if verbosity <= 0 else 20, result=result
            )
        )
    else:
        message = f"memdiag: {peaks[0].describe()}"
    for peak in peaks if leaked else peaks[1:]:
        lines.append(f"memdiag: {peak.describe()}")
    if peaks and not leaked:
        lines.insert(0, message)
    lines.append(f"(full report in the '{SECTION}' section below)")
    section = render_text(result, width=width, verbosity=verbosity) if result else ""
    return LeakFailure(message=message, long_repr="\n".join(lines), section=section)

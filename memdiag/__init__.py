"""memdiag: find GPU memory that does not come back, and say who holds it.

Importing memdiag imports neither torch nor any vendor library: backends load them
when a tracker starts.  The names below load on first use, so importing a value type
(``from memdiag import Finding``) does not import the tracker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memdiag.values.lazy import lazy_exports

if TYPE_CHECKING:
    from memdiag.check.tracker import Tracker, active_tracker, phase, track
    from memdiag.values.findings import Finding, FindingKind
    from memdiag.values.result import CheckResult
    from memdiag.values.units import Tolerance, format_bytes, parse_size, parse_tolerance

__all__ = [
    "CheckResult",
    "Finding",
    "FindingKind",
    "Tolerance",
    "Tracker",
    "active_tracker",
    "format_bytes",
    "parse_size",
    "parse_tolerance",
    "phase",
    "track",
]

__version__ = "0.1.0"

_HOMES = {
    "CheckResult": "memdiag.values.result",
    "Finding": "memdiag.values.findings",
    "FindingKind": "memdiag.values.findings",
    "Tolerance": "memdiag.values.units",
    "Tracker": "memdiag.check.tracker",
    "active_tracker": "memdiag.check.tracker",
    "format_bytes": "memdiag.values.units",
    "parse_size": "memdiag.values.units",
    "parse_tolerance": "memdiag.values.units",
    "phase": "memdiag.check.tracker",
    "track": "memdiag.check.tracker",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

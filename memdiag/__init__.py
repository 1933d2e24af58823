"""memdiag: find GPU memory that does not come back, and say who holds it.

Importing memdiag imports neither torch nor any vendor library: backends load them
when a tracker starts.
"""

from __future__ import annotations

from memdiag.findings import Finding, FindingKind
from memdiag.result import CheckResult
from memdiag.tracker import Tracker, active_tracker, phase, track
from memdiag.units import Tolerance, format_bytes, parse_size, parse_tolerance

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

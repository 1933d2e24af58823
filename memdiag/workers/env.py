"""The parent/worker contract: the environment a parent hands its workers, and where
each worker's report goes.

A parent that wants its workers' reports sets :data:`ENV_DIR` before it starts them
(:class:`~memdiag.workers.merge.WorkerReportDir`); each worker's agent
(:mod:`memdiag.agent`) reads these variables and writes :func:`report_path`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_DEVICE", "ENV_DIR", "ENV_SETTLE", "report_path"]

ENV_DIR = "MEMDIAG_AGENT_DIR"
"""Directory the workers write their reports to; unset means the agent is off."""
ENV_DEVICE = "MEMDIAG_AGENT_DEVICE"
"""``--device`` of the workers' trackers (default ``auto``)."""
ENV_SETTLE = "MEMDIAG_AGENT_SETTLE"
"""``--settle`` seconds of the workers' trackers (default: the tracker's)."""


def report_path(directory: str | os.PathLike[str], pid: int | None = None) -> Path:
    """``<directory>/memdiag-<pid>.json``."""
    return Path(directory) / f"memdiag-{os.getpid() if pid is None else pid}.json"

"""JSON report: ``CheckResult.to_json()`` plus who produced it.  Every number is bytes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from memdiag.result import CheckResult

__all__ = ["load_json", "write_json"]


def write_json(result: CheckResult, path: str | Path, **context: Any) -> None:
    """Write atomically: a half-written report is never left behind."""
    data = result.to_json()
    data["context"] = {"pid": os.getpid(), "argv": list(sys.argv), **context}
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(target)


def load_json(path: str | Path) -> CheckResult:
    return CheckResult.from_json(json.loads(Path(path).read_text()))

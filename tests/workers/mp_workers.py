"""Worker entry points for the multi-process tests.

They live in their own importable module because ``spawn`` children import their
target by name; each imports torch inside, so the parent pays nothing for them.
"""

from __future__ import annotations

import functools
import sys
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import memdiag.agent


def hold_tensors(ready: Event, stop: Event) -> None:
    """A worker that allocates its weights and waits to be told to stop."""
    import torch

    weights = [torch.ones(1024, 1024), torch.ones(1024, 1024)]  # 2 x 4 MiB
    memdiag.agent.write_report()  # the agent's report on request, while alive
    ready.set()
    stop.wait(60)
    del weights


@functools.cache
def table(rows: int) -> Any:
    import torch

    return torch.full((rows, 512), 1.0)


def cached_tables() -> None:
    """A worker whose heap leaks: the lru_cache keeps its 4 MiB table after it returns."""
    assert float(table(2048).sum()) == 2048 * 512


def engine_worker(rank: int, results: Queue[Any]) -> None:
    """A well-behaved worker: computes, sends its result, keeps nothing."""
    import torch

    x = torch.ones(512, 512) * (rank + 1)
    results.put((rank, float((x @ x).sum())))
    del x


def sleep_forever() -> None:  # pragma: no cover - killed by the test
    import time

    time.sleep(60)
    sys.exit(0)

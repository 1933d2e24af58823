"""Settle: wait for memory that is released lazily, never for a leak.

After shutdown, memory can take a while to come back: ROCm returns VRAM lazily, a
worker process exits and the driver releases its memory, a thread drops its last
reference.  Such memory *decays*: the readings keep falling.  A leak *stalls*: the
same readings, bit for bit, poll after poll.  So the settle polls with backoff and
ends on the first of:

- ``back``: every device is back within tolerance (and no child process pending);
- ``stalled``: the readings the verdict depends on have not changed for the stall
  window (:func:`stall_window`), so waiting longer cannot change the verdict;
- ``timed out``: the settle time ran out while the readings were still moving.

Only the fields behind a device's failing reasons are compared (``allocated`` for a
live-tensor growth, this process' driver usage for memory outside PyTorch...), so
an unrelated counter that wobbles (another process on the device) does not keep a
leak waiting.  While a child process started during tracking is still alive, the
settle does not end on a stall: its exit is what is being waited for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

from memdiag.check.classify import Assessment
from memdiag.values.readings import DeviceReading

__all__ = ["SettleOutcome", "poll_until_settled", "settle_clock", "stall_window"]

settle_clock = time.monotonic
"""Bound at import: a program that replaces ``time.monotonic`` cannot stall a settle."""
_sleep = time.sleep

MIN_STALL = 0.5
MAX_STALL = 10.0
_FIRST_DELAY = 0.01
_MAX_DELAY = 0.25

# The reading fields behind each failing reason of an assessment.
_FIELDS: dict[str, tuple[str, ...]] = {
    "allocated": ("allocated",),
    "outside_torch": ("process_used", "reserved"),
    "other_process": ("processes",),
    "driver_used": ("driver_used",),
}


def stall_window(settle_s: float) -> float:
    """Seconds of unchanged readings that end a settle: a quarter of the settle time,
    at least 0.5 s (lazy release has plateaus) and at most 10 s (also when the settle
    time is not a finite number)."""
    if not math.isfinite(settle_s):
        return MAX_STALL
    return min(settle_s, max(MIN_STALL, min(MAX_STALL, settle_s / 4)))


@dataclass(frozen=True)
class SettleOutcome:
    """How a settle ended: ``back``, ``stalled`` or ``timed out``, after ``elapsed_s``."""

    ended: str
    elapsed_s: float
    polls: int
    settle_s: float
    stall_s: float

    def describe(self) -> str:
        if self.ended == "back":
            return f"memory came back after settling {self.elapsed_s:.2f} s ({self.polls} polls)"
        if self.ended == "stalled" and self.elapsed_s >= self.settle_s:
            # The last poll of the settle time also closed the stall window: nothing
            # was cut short, so say what the readings did, not that it ended early.
            return (
                f"settled {self.elapsed_s:.2f} s (settle time {self.settle_s:g} s): the "
                f"readings stopped moving for the last {self.stall_s:.2f} s ({self.polls} "
                "polls), as a leak does (lazily released memory keeps falling)"
            )
        if self.ended == "stalled":
            return (
                f"settled {self.elapsed_s:.2f} s of up to {self.settle_s:g} s: the readings "
                f"stopped moving for {self.stall_s:.2f} s ({self.polls} polls), so the "
                "verdict did not wait longer (lazily released memory keeps falling; a leak "
                "stays put)"
            )
        if self.settle_s <= 0:
            return (
                "no settle (settle time 0 s): the verdict used the first reading after "
                "the program or test ended; a settle time (--settle, --gpu-leak-settle) "
                "lets lazily released memory come back first"
            )
        if self.polls < 2:
            return (
                f"the settle time ({self.settle_s:g} s) ran out at the first reading "
                f"({self.elapsed_s:.2f} s): one reading cannot tell lazily released "
                "memory from a leak; a longer settle time may let it come back"
            )
        return (
            f"settle timed out after {self.elapsed_s:.2f} s ({self.polls} polls) with memory "
            "still moving; a longer settle time may let it come back"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "ended": self.ended,
            "elapsed_s": self.elapsed_s,
            "polls": self.polls,
            "settle_s": self.settle_s,
            "stall_s": self.stall_s,
        }


def _fingerprint(readings: Mapping[str, DeviceReading], assessment: Assessment) -> Hashable:
    parts: list[object] = []
    for device, judged in sorted(assessment.devices.items()):
        reading = readings.get(device)
        if reading is None or not judged.reasons:
            continue
        for reason in judged.reasons:
            for name in _FIELDS.get(reason, ("allocated", "reserved", "driver_used")):
                value = getattr(reading, name)
                if name == "processes":
                    value = tuple(sorted((p.pid, p.used) for p in value))
                parts.append((device, name, value))
        parts.append((device, "own_used", reading.extra.get("own_used")))
    return tuple(parts)


Poll = Callable[[], "tuple[dict[str, DeviceReading], Assessment, bool]"]
"""One poll: (readings, their assessment, whether a child process is still pending)."""


def poll_until_settled(
    poll: Poll, *, settle_s: float, started: float, stall_s: float | None = None
) -> tuple[dict[str, DeviceReading], Assessment, SettleOutcome]:
    """Poll with backoff until memory is back, the readings stall, or time runs out.

    ``started`` is the :func:`time.monotonic` time the settle began (the elapsed time
    reported counts from there).
    """
    stall = stall_window(settle_s) if stall_s is None else max(0.0, stall_s)
    delay = _FIRST_DELAY
    polls = 0
    last: Hashable = None
    changed = settle_clock()
    while True:
        readings, assessment, pending = poll()
        polls += 1
        now = settle_clock()
        elapsed = now - started
        if assessment.clean and not pending:
            ended = "back"
        else:
            mark = _fingerprint(readings, assessment)
            if polls == 1 or mark != last:
                last, changed = mark, now
                ended = ""
            else:
                ended = "stalled" if not pending and now - changed >= stall else ""
            if not ended and elapsed >= settle_s:
                ended = "timed out"
        if ended:
            outcome = SettleOutcome(ended, elapsed, polls, settle_s, stall)
            return readings, assessment, outcome
        _sleep(max(0.0, min(delay, settle_s - elapsed)))
        delay = min(delay * 2, _MAX_DELAY)

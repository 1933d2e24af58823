"""The one small protocol every memory source speaks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from memdiag.values.readings import DeviceReading

__all__ = ["Availability", "Backend", "BackendUnavailable"]


class BackendUnavailable(RuntimeError):
    """A backend cannot be used here; the message is the one-line reason."""


@dataclass(frozen=True)
class Availability:
    """Whether a backend can be used here, and if not, why (one line)."""

    available: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Availability:
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


@runtime_checkable
class Backend(Protocol):
    """A source of device-memory readings.

    ``probe`` must never raise and must import its vendor library lazily: a missing or
    broken library makes the backend unavailable with a reason.  ``devices`` lists the
    device names it reads (``cuda:0``, ``cpu``...), in torch's numbering where the
    device is a torch accelerator.  ``read`` is the cheap path: counters only.

    Optional, looked up with ``getattr``: ``recheck(device, reading) -> dict | None``,
    ``None`` when what ``read`` would return now differs from ``reading``, else the
    fields that moved without changing what the reading says (the peaks; ``{}`` when
    none): a later baseline then takes the earlier reading instead of reading again, and
    a check whose counters did not move repeats the last verdict; ``pools(device)``
    (the torch backend).
    """

    name: str

    def probe(self) -> Availability: ...

    def devices(self) -> tuple[str, ...]: ...

    def read(self, device: str) -> DeviceReading: ...

    def reset_peak(self, device: str) -> None: ...

    def settle(self, device: str, *, baseline: bool = False) -> None:
        """Synchronise and drop framework-held workspaces that are not the program's.
        ``baseline``: before a baseline reading (the passing path: keep it cheap)."""
        ...

    def close(self) -> None: ...

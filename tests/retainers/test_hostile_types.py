"""The retainer analysis never runs the program's code: a metaclass whose ``__eq__``,
``__hash__``, ``__instancecheck__``, ``__getattribute__`` and ``__repr__`` raise, on a
class whose instances hold the leak, still gets its chain (it used to end in
"retainer analysis failed: RuntimeError")."""

from __future__ import annotations

from typing import Any

import torch

from memdiag.retainers import analyze
from tests.retainers.leaks import targets_of


class HostileMeta(type):
    def __eq__(cls, other: object) -> bool:
        raise RuntimeError("metaclass __eq__")

    def __hash__(cls) -> int:
        raise RuntimeError("metaclass __hash__")

    def __instancecheck__(cls, obj: object) -> bool:
        raise RuntimeError("metaclass __instancecheck__")

    def __subclasscheck__(cls, sub: type) -> bool:
        raise RuntimeError("metaclass __subclasscheck__")

    def __repr__(cls) -> str:
        raise RuntimeError("metaclass __repr__")


class Holder(metaclass=HostileMeta):
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"__getattr__ {name}")

    def __bool__(self) -> bool:
        raise RuntimeError("__bool__")

    def __len__(self) -> int:
        raise RuntimeError("__len__")


def test_a_hostile_metaclass_on_the_chain_is_described_not_called(leak_module: Any) -> None:
    def leak() -> dict[int, int]:
        holder = Holder()
        holder.__dict__["weights"] = [torch.ones(1024)]
        leak_module.HOLDER = holder
        leak_module.CLASSES = [Holder, (Holder, holder)]  # the class itself on the way, too
        return targets_of(holder.__dict__["weights"])

    report = analyze(leak())
    names = {g.root_name for g in report.groups}
    assert f"{leak_module.__name__}.HOLDER" in names, report.text()
    group = next(g for g in report.groups if g.root_name == f"{leak_module.__name__}.HOLDER")
    assert group.chain_text().endswith(".weights[0] (cpu, 4.0 KiB)")
    assert group.retained_bytes == 4096

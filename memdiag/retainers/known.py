"""Retention that is the framework's, not the engine's; and rules to ignore findings.

The list is data, in one place: :data:`DEFAULT_KNOWN`.  Extend it by passing
``known=DEFAULT_KNOWN + (KnownRetention(...),)`` to the analysis.  A finding that
matches is still reported, flagged with the entry's name and explanation, and is not
blamed on the engine.  An :class:`IgnoreRule` drops a finding from the blame list
altogether (it is kept in ``RetainerReport.ignored``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

__all__ = ["DEFAULT_KNOWN", "IgnoreRule", "KnownRetention", "match_ignore", "match_known"]


@dataclass(frozen=True)
class KnownRetention:
    """Framework state that legitimately holds device memory.

    ``root_pattern`` is a glob over the finding's root name (``torch._dynamo.*``);
    ``chain_pattern``, when set, is a glob that the one-line chain must also match.
    """

    name: str
    root_pattern: str
    explanation: str
    chain_pattern: str = ""

    def matches(self, root_name: str, chain_text: str) -> bool:
        if not fnmatchcase(root_name, self.root_pattern):
            return False
        return not self.chain_pattern or fnmatchcase(chain_text, self.chain_pattern)


@dataclass(frozen=True)
class IgnoreRule:
    """Drop findings whose root name matches ``root_pattern`` (glob) and/or whose
    ``signature`` equals the given one.  At least one of the two must be set."""

    root_pattern: str | None = None
    signature: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.root_pattern is None and self.signature is None:
            raise ValueError("an IgnoreRule needs a root_pattern, a signature or both")

    def matches(self, root_name: str, signature: str) -> bool:
        if self.root_pattern is not None and not fnmatchcase(root_name, self.root_pattern):
            return False
        return self.signature is None or self.signature == signature


_COMPILE = (
    "torch.compile caches compiled graphs, their constants and guards until "
    "torch._dynamo.reset() or torch.compiler.reset()"
)

#: What torch and its kernels keep on purpose.  Root names are module paths, so the
#: patterns follow the package layout; native-only holders (cuBLAS/cuDNN workspaces,
#: NCCL communicators) never reach a Python root and are covered by their owners here.
DEFAULT_KNOWN: tuple[KnownRetention, ...] = (
    KnownRetention("torch.compile cache", "torch._dynamo.*", _COMPILE),
    KnownRetention("torch.compile cache", "torch._inductor.*", _COMPILE),
    KnownRetention("torch.compile cache", "torch._functorch.*", _COMPILE),
    KnownRetention(
        "Triton kernel cache",
        "triton.*",
        "Triton keeps compiled kernels and their launch metadata for the process' life",
    ),
    KnownRetention(
        "CUDA graph memory pool",
        "torch.cuda.graphs.*",
        "a live torch.cuda.CUDAGraph keeps its private memory pool until the graph is "
        "deleted or reset()",
    ),
    KnownRetention(
        "NCCL / process-group buffers",
        "torch.distributed.*",
        "process groups keep communication buffers until destroy_process_group()",
    ),
    KnownRetention(
        "cuBLAS / cuDNN workspace",
        "torch.backends.*",
        "BLAS and convolution workspaces are cached per stream; "
        "torch._C._cuda_clearCublasWorkspaces() frees cuBLAS's",
    ),
)


def match_known(
    known: Sequence[KnownRetention], root_name: str, chain_text: str
) -> KnownRetention | None:
    """The first entry that matches, or ``None``."""
    for entry in known:
        if entry.matches(root_name, chain_text):
            return entry
    return None


def match_ignore(rules: Sequence[IgnoreRule], root_name: str, signature: str) -> IgnoreRule | None:
    for rule in rules:
        if rule.matches(root_name, signature):
            return rule
    return None

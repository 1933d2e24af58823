"""Retainer analysis: for every leaked byte, who holds it, and through what.

Given the leaked storages (storage key -> bytes), :func:`analyze` walks the heap once
and reports each retainer as a :class:`RetainerGroup`: a named root
(``pkg.mod.NAME``, ``mod.Class.attr``, ``lru_cache of mod.fn``, a live thread's frame,
the gc-frozen generation...), the retained bytes and tensor count, one example chain
such as ``lru_cache of func_utils.supports_kw -> cache key -> bound method
Model.forward -> Model -> .layers[3].weight (cpu, 64.0 MiB)``, the suspect reference
in it and a stable signature.  No pytest, no rendering, and no torch import here.
"""

from __future__ import annotations

from memdiag.retainers.analysis import analyze, analyze_heap
from memdiag.retainers.known import DEFAULT_KNOWN, IgnoreRule, KnownRetention
from memdiag.retainers.model import RetainerReport
from memdiag.retainers.roots import ThreadStack, capture_threads
from memdiag.values.retainers import ROOT_KINDS, Edge, RetainerGroup

__all__ = [
    "DEFAULT_KNOWN",
    "ROOT_KINDS",
    "Edge",
    "IgnoreRule",
    "KnownRetention",
    "RetainerGroup",
    "RetainerReport",
    "ThreadStack",
    "analyze",
    "analyze_heap",
    "capture_threads",
]

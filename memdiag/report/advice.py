"""One line of advice per finding, fitted to its class and, when the retainer analysis
named a root, to that root: ``clear `_ROPE_CACHE` in shutdown``."""

from __future__ import annotations

import re

from memdiag.report.facts import groups_of
from memdiag.values.findings import Finding
from memdiag.values.retainers import RetainerGroup

__all__ = ["advice_for", "advice_for_group"]

_CONTAINERS = frozenset(
    {
        "dict",
        "list",
        "set",
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.deque",
        "weakref.WeakValueDictionary",
    }
)
_THREAD = re.compile(r"^thread '(?P<name>[^']*)' in (?P<where>.*)$")


def _short(qualified: str) -> str:
    """``pkg.mod.NAME -> NAME``; ``pkg.mod.Class.attr`` -> ``attr`` (caller picks)."""
    return qualified.rsplit(".", 1)[-1]


def advice_for_group(group: RetainerGroup) -> str:
    """What to change so that this retainer lets go; ``""`` when nothing specific fits."""
    first = group.chain[0] if group.chain else None
    kind, root = group.root_kind, group.root_name
    if group.known:
        return f"expected: {group.known} keeps this for the process' life"
    if kind == "module":
        name = _short(root)
        if first is not None and first.type_name in _CONTAINERS:
            return f"clear `{name}` in shutdown (`{name}.clear()`, or remove this run's entries)"
        return f"release `{name}` in shutdown (`{name} = None`)"
    if kind == "class":
        parts = root.split(".")
        attr = ".".join(parts[-2:]) if len(parts) >= 2 else root
        return f"reset `{attr}` in shutdown (`{attr} = None`)"
    if kind == "lru_cache":
        fn = _short(root.removeprefix("lru_cache of "))
        text = f"call `{fn}.cache_clear()` in shutdown"
        held = group.suspect_text() if group.suspect_index else group.suspect_hop()
        if held:
            text += f", or key it on values that do not hold the engine ({held})"
        return text
    if kind == "thread":
        match = _THREAD.match(root)
        name = f"thread '{match.group('name')}'" if match else "the thread"
        local = f" (its frame holds {first.label})" if first and first.label else ""
        return f"stop and join {name} in shutdown{local}"
    if kind == "exception":
        return "drop the stored exception or its traceback (`exc.__traceback__ = None`)"
    if kind == "registry":
        module = root.removesuffix(" module state")
        return f"unregister the hooks or callbacks `{module}` keeps in shutdown"
    if kind == "frozen" or group.frozen:
        return "call gc.unfreeze() in shutdown, paired with the gc.freeze() at start"
    return ""


def advice_for(finding: Finding) -> str:
    """The top retainer's advice when there is one, else the finding's own advice."""
    for group in groups_of(finding):
        text = advice_for_group(group)
        if text:
            return text
    return finding.advice

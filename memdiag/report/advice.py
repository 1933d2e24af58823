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
_LOGGERS = frozenset({"logging.Logger", "logging.RootLogger"})
_ATTRIBUTE = re.compile(r"^\.[A-Za-z_]\w*")
_THREAD = re.compile(r"^thread '(?P<name>[^']*)' in (?P<where>.*)$")


def _short(qualified: str) -> str:
    """``pkg.mod.NAME -> NAME``; ``pkg.mod.Class.attr`` -> ``attr`` (caller picks)."""
    return qualified.rsplit(".", 1)[-1]


def _stored_on(group: RetainerGroup, start: int) -> str:
    """The attribute path stored on the object at hop ``start``: ``.cache``."""
    path = ""
    for hop in group.chain[start + 1 :]:
        if hop.label.startswith((".", "[")):
            path += hop.label
        elif hop.label:
            break
        if hop.node:
            break
    return path


def _first_attribute(path: str) -> str:
    """``.buffers[0].x`` -> ``.buffers``: the attribute to delete; ``""`` if none."""
    match = _ATTRIBUTE.match(path)
    return match.group() if match else ""


def _outside_advice(group: RetainerGroup) -> str:
    """Advice for holders outside the heap and for logging's registry."""
    root = group.root_name
    first = group.chain[0] if group.chain else None
    what = first.label if first is not None else ""
    if root.startswith("atexit callbacks") and what.startswith("arguments of "):
        fn = what.removeprefix("arguments of ").removeprefix("function ").removeprefix("builtin ")
        return (
            f"call `atexit.unregister({_short(fn)})` in shutdown, or pass it no tensors "
            "(atexit keeps a callback's arguments until the interpreter exits)"
        )
    if root.startswith("atexit callbacks"):
        fn = what.removeprefix("function ") or "the callback"
        return (
            f"call `atexit.unregister({_short(fn)})` in shutdown, or let the callback "
            "reach no tensors (atexit keeps it until the interpreter exits)"
        )
    if root.startswith("contextvars context"):
        var = what.removeprefix("ContextVar ").strip("'\"") or "the ContextVar"
        return (
            f"reset the ContextVar {var!r} in shutdown (`var.reset(token)` with the token "
            "`var.set()` returned, or `var.set(None)`); gc.collect() does not free it"
        )
    if root.startswith("signal handler for "):
        name = root.removeprefix("signal handler for ")
        return f"restore the previous handler in shutdown (`signal.signal(signal.{name}, old)`)"
    if root.startswith("sys.settrace()"):
        return "remove the trace function in shutdown (`sys.settrace(None)`)"
    if root.startswith("sys.setprofile()"):
        return "remove the profile function in shutdown (`sys.setprofile(None)`)"
    if root.startswith("logging.getLogger("):
        stored = _first_attribute(_stored_on(group, -1))
        target = f"run `del {root}{stored}`" if stored else "remove what you stored on it"
        return (
            f"logging keeps this logger for the process' life: {target} in shutdown "
            "(setting your variable to None frees nothing)"
        )
    if group.root_kind == "native" and len(group.chain) > 1 and first is not None:
        held = first.node or first.type_name  # an object nothing in the heap refers to
        return (
            f"find the native code that keeps {held} alive (a C extension, a hook or a "
            "thread registered from C): nothing in the Python heap refers to it, and "
            "gc.collect() does not free it"
        )
    return ""


def advice_for_group(group: RetainerGroup) -> str:
    """What to change so that this retainer lets go; ``""`` when nothing specific fits."""
    first = group.chain[0] if group.chain else None
    kind, root = group.root_kind, group.root_name
    if group.known:
        return f"expected: {group.known} keeps this for the process' life"
    outside = _outside_advice(group)
    if outside:
        return outside
    if first is not None and first.type_name in _LOGGERS and kind in ("module", "class"):
        name = _short(root) if kind == "module" else ".".join(root.split(".")[-2:])
        stored = _first_attribute(_stored_on(group, 0))
        target = f"run `del {name}{stored}`" if stored else "remove what you stored on it"
        return (
            f"`{name} = None` frees nothing: logging keeps every logger in "
            f"logging.Logger.manager.loggerDict for the process' life; {target} in shutdown"
        )
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

"""From readings (and, on the failing path, a census) to a verdict and findings.

:func:`assess` is the cheap part, run at every poll: counters against baseline.
:func:`classify` turns what remains into findings, each with bytes and a class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memdiag.check.accounting import Accounting, framework_growth
from memdiag.heap.census import Census, StorageRecord
from memdiag.values.findings import Finding, FindingKind, TensorGroup
from memdiag.values.readings import DeviceReading, ProcessUsage, pool_key
from memdiag.values.result import PhaseRecord
from memdiag.values.units import format_bytes, plural

__all__ = ["Assessment", "DeviceAssessment", "assess", "classify", "to_account"]


@dataclass(frozen=True)
class PoolGrowth:
    """One private pool's reserved, unallocated memory grown since baseline."""

    pool: tuple[int, int]
    nbytes: int
    owners: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"({self.pool[0]}, {self.pool[1]})"


@dataclass(frozen=True)
class DeviceAssessment:
    device: str
    baseline: DeviceReading
    reading: DeviceReading
    allowance: int
    driver_allowance: int
    allocated_growth: int | None
    cache_growth: int | None
    outside_growth: int | None
    context_bytes: int | None
    """Memory outside PyTorch that appeared because the device context was created
    during tracking (kept for the process' life; not a leak)."""
    other_processes: tuple[tuple[ProcessUsage, int], ...]
    """(process, growth since baseline) for the other processes of the tree."""
    reasons: tuple[str, ...]
    pools: tuple[PoolGrowth, ...] = ()
    """Private pools whose reserved-but-free memory grew while an owner lives."""
    returnable: int | None = None
    """Bytes ``empty_cache()`` can return now (free default-pool segments and pools
    no owner keeps), where the allocator's pool split was read."""

    @property
    def pool_growth(self) -> int:
        return sum(p.nbytes for p in self.pools)

    @property
    def other_growth(self) -> int:
        return sum(max(0, growth) for _, growth in self.other_processes)


@dataclass(frozen=True)
class Assessment:
    devices: dict[str, DeviceAssessment]

    @property
    def clean(self) -> bool:
        return not any(d.reasons for d in self.devices.values())

    @property
    def allowances(self) -> dict[str, int]:
        return {k: d.allowance for k, d in self.devices.items()}

    @property
    def driver_allowances(self) -> dict[str, int]:
        return {k: d.driver_allowance for k, d in self.devices.items()}


def _diff(now: int | None, then: int | None) -> int | None:
    return None if now is None or then is None else now - then


def assess(
    *,
    baseline: Mapping[str, DeviceReading],
    readings: Mapping[str, DeviceReading],
    phases: Sequence[PhaseRecord],
    allowance: Callable[[str, int | None], int],
    driver_allowance: Callable[[int | None], int],
    own_pid: int,
    tree_pids: frozenset[int],
) -> Assessment:
    result: dict[str, DeviceAssessment] = {}
    for device, reading in readings.items():
        base = baseline.get(device) or DeviceReading(device=device)
        total = reading.total or base.total
        allow = allowance(device, total)
        driver_allow = driver_allowance(total)
        growth = _diff(reading.allocated, base.allocated)
        cache_now = _diff(reading.reserved, reading.allocated)
        cache_then = _diff(base.reserved, base.allocated)
        cache_growth = _diff(cache_now, cache_then)
        outside_growth, context = _outside(device, base, reading, phases)
        others = _other_processes(base, reading, own_pid, tree_pids)
        pools = _pool_growth(base, reading)
        reasons: list[str] = []
        if growth is not None and growth > allow:
            reasons.append("allocated")
        if sum(p.nbytes for p in pools) > allow:
            reasons.append("private_pool")
        if outside_growth is not None and outside_growth > driver_allow:
            reasons.append("outside_torch")
        if sum(max(0, g) for _, g in others) > driver_allow:
            reasons.append("other_process")
        if (
            reading.process_used is None
            and reading.allocated is None
            and (_diff(reading.driver_used, base.driver_used) or 0) > driver_allow
        ):
            reasons.append("driver_used")
        result[device] = DeviceAssessment(
            device=device,
            baseline=base,
            reading=reading,
            allowance=allow,
            driver_allowance=driver_allow,
            allocated_growth=growth,
            cache_growth=cache_growth,
            outside_growth=outside_growth,
            context_bytes=context,
            other_processes=tuple(others),
            reasons=tuple(reasons),
            pools=pools,
            returnable=_returnable(reading),
        )
    return Assessment(result)


def _private(reading: DeviceReading) -> dict[str, Any]:
    pools = reading.extra.get("pools")
    private = pools.get("private") if isinstance(pools, dict) else None
    return private if isinstance(private, dict) else {}


def _returnable(reading: DeviceReading) -> int | None:
    pools = reading.extra.get("pools")
    return int(pools["returnable"]) if isinstance(pools, dict) and "returnable" in pools else None


def _pool_growth(base: DeviceReading, reading: DeviceReading) -> tuple[PoolGrowth, ...]:
    before = _private(base)
    out: list[PoolGrowth] = []
    for name, entry in _private(reading).items():
        if len(entry) < 3:  # no free bytes in any pool: nothing held beyond its tensors
            continue
        reserved, allocated, owners = entry[0], entry[1], entry[2]
        then = before.get(name)
        held_then = int(then[0]) - int(then[1]) if then else 0
        grown = int(reserved) - int(allocated) - held_then
        if grown > 0:
            first, _, second = name.partition(",")
            out.append(PoolGrowth((int(first), int(second)), grown, tuple(owners)))
    out.sort(key=lambda p: -p.nbytes)
    return tuple(out)


def _outside(
    device: str, base: DeviceReading, reading: DeviceReading, phases: Sequence[PhaseRecord]
) -> tuple[int | None, int | None]:
    now = reading.outside_torch
    if now is None:
        return None, None
    # A device context appears when the program first uses the device: torch was not
    # initialised at baseline, or the driver charged nothing to this process there.
    created = (base.extra.get("initialized") is False or base.extra.get("own_used") == 0) and bool(
        reading.extra.get("initialized", True)
    )
    if not created:
        then = base.outside_torch
        return (None if then is None else now - then), None
    # The context appeared during tracking: its own size is not a leak.  Take the
    # smallest outside-PyTorch value seen since it exists as the context's floor.
    floor = now
    for record in phases:
        seen = record.reading(device)
        if seen is not None and seen.extra.get("initialized", True):
            value = seen.outside_torch
            if value is not None and (seen.extra.get("own_used") or 0) > 0:
                floor = min(floor, value)
    return now - floor, floor


def _other_processes(
    base: DeviceReading, reading: DeviceReading, own_pid: int, tree_pids: frozenset[int]
) -> list[tuple[ProcessUsage, int]]:
    before = {p.pid: p.used for p in base.processes}
    out = []
    for proc in reading.processes:
        if proc.pid == own_pid or proc.pid not in tree_pids:
            continue
        out.append((proc, proc.used - before.get(proc.pid, 0)))
    return out


def _groups(records: Sequence[StorageRecord]) -> tuple[TensorGroup, ...]:
    grouped: dict[tuple[object, ...], list[StorageRecord]] = {}
    for record in records:
        ex = record.example
        grouped.setdefault((ex.shape, ex.dtype, ex.device, ex.type_name, record.nbytes), []).append(
            record
        )
    groups = [
        TensorGroup(example=items[0].example, count=len(items), nbytes=sum(r.nbytes for r in items))
        for items in grouped.values()
    ]
    groups.sort(key=lambda g: g.nbytes, reverse=True)
    return tuple(groups)


def to_account(assessment: Assessment) -> list[str]:
    """Devices whose memory outside PyTorch needs its buckets named: it grew beyond
    the tolerance, or a device context appeared during tracking."""
    return [
        device
        for device, a in assessment.devices.items()
        if a.context_bytes or (a.outside_growth or 0) > a.allowance
    ]


def classify(
    *,
    assessment: Assessment,
    census: Census | None,
    workspace: Mapping[str, int],
    freeze_before: int,
    freeze_now: int,
    accounting: Mapping[str, Accounting] | None = None,
) -> list[Finding]:
    """Findings for every device, leaks first, biggest first.

    ``accounting``: the driver's figure of each device split into named buckets
    (:func:`memdiag.check.accounting.account_devices`); the outside-PyTorch finding
    lists them, and growth the framework's own holders explain is not a leak."""
    findings: list[Finding] = []
    for device, a in assessment.devices.items():
        acc = (accounting or {}).get(device)
        findings.extend(_tensor_findings(a, census, freeze_before, freeze_now))
        findings.extend(_pool_findings(a))
        findings.extend(_driver_findings(a, acc))
        findings.extend(_info_findings(a, workspace.get(device, 0), acc))
    findings.sort(key=lambda f: (not f.is_leak, -f.nbytes))
    return findings


def _finding(
    a: DeviceAssessment,
    kind: FindingKind,
    nbytes: int,
    message: str,
    *,
    leak: bool,
    advice: str = "",
    tensors: tuple[TensorGroup, ...] = (),
    storages: tuple[tuple[int, int, int], ...] = (),
    processes: tuple[ProcessUsage, ...] = (),
) -> Finding:
    return Finding(
        kind=kind,
        device=a.device,
        nbytes=nbytes,
        is_leak=leak,
        message=message,
        advice=advice,
        tensors=tensors,
        storages=storages,
        processes=processes,
    )


def _storage_finding(
    a: DeviceAssessment,
    kind: FindingKind,
    records: Sequence[StorageRecord],
    message: str,
    advice: str,
) -> Finding:
    """A finding over leaked storages: a leak when they exceed the tolerance."""
    nbytes = sum(r.nbytes for r in records)
    return _finding(
        a,
        kind,
        nbytes,
        message,
        leak=nbytes > a.allowance,
        advice=advice,
        tensors=_groups(records),
        storages=tuple((r.key, r.nbytes, r.data_ptr) for r in records),
    )


def _tensor_findings(
    a: DeviceAssessment, census: Census | None, freeze_before: int, freeze_now: int
) -> list[Finding]:
    out: list[Finding] = []
    allow = a.allowance

    def counters() -> str:  # words only where a finding is made: clean checks skip them
        return (
            f"allocated {format_bytes(a.baseline.allocated or 0)} at baseline, "
            f"{format_bytes(a.reading.allocated or 0)} now, tolerance {format_bytes(allow)}"
        )

    if census is None:
        if "allocated" in a.reasons:
            grown = a.allocated_growth or 0
            out.append(
                _finding(
                    a,
                    FindingKind.NATIVE,
                    grown,
                    f"{format_bytes(grown)} still allocated after the last phase ({counters()}); "
                    "the heap census could not run",
                    leak=True,
                    advice="see the notices for why the census failed",
                )
            )
        return out
    records = [r for r in census.new if r.device == a.device]
    live = [r for r in records if not r.frozen]
    frozen = [r for r in records if r.frozen]
    live_bytes = sum(r.nbytes for r in live)
    frozen_bytes = sum(r.nbytes for r in frozen)
    if live_bytes:
        tensors = sum(r.tensor_count for r in live)
        out.append(
            _storage_finding(
                a,
                FindingKind.LIVE_TENSORS,
                live,
                f"{format_bytes(live_bytes)} in {plural(len(live), 'storage')} "
                f"({plural(tensors, 'tensor')}) "
                f"created since baseline are still alive ({counters()})",
                "drop the references that keep them alive in shutdown",
            )
        )
    if frozen_bytes:
        out.append(
            _storage_finding(
                a,
                FindingKind.GC_FROZEN,
                frozen,
                f"{format_bytes(frozen_bytes)} in {plural(len(frozen), 'storage')} held only by "
                f"objects frozen with gc.freeze() ({plural(freeze_before, 'object')} frozen at "
                f"baseline, {freeze_now} now); frozen garbage is never collected",
                "call gc.unfreeze() in shutdown, paired with the gc.freeze() at start",
            )
        )
    if a.device != "cpu" and a.allocated_growth is not None:
        native = a.allocated_growth - live_bytes - frozen_bytes
        if native > allow:
            out.append(
                _finding(
                    a,
                    FindingKind.NATIVE,
                    native,
                    f"{format_bytes(native)} still allocated is held by no Python tensor "
                    f"({counters()}; live tensors explain {format_bytes(live_bytes)})",
                    leak=True,
                    advice=(
                        "look for autograd graphs kept by a live output (.detach() what you "
                        "store), CUDA graphs, or C++ extensions that hold tensors"
                    ),
                )
            )
    return out


def _pool_findings(a: DeviceAssessment) -> list[Finding]:
    if "private_pool" not in a.reasons:
        return []
    names = ", ".join(f"{p.name} of {'/'.join(p.owners) or '?'}" for p in a.pools)
    total = a.pool_growth
    plural = "s" if len(a.pools) != 1 else ""
    return [
        _finding(
            a,
            FindingKind.PRIVATE_POOL,
            total,
            f"{format_bytes(total)} stays reserved in {len(a.pools)} private pool{plural} "
            f"({names}) that a live owner keeps; torch.cuda.empty_cache() cannot return it "
            f"(tolerance {format_bytes(a.allowance)})",
            leak=True,
            advice=(
                "drop the CUDA graph / torch.cuda.MemPool that owns the pool (retainers "
                "below) in shutdown; for torch.compile(mode='reduce-overhead') delete the "
                "compiled model and call torch._dynamo.reset()"
            ),
            storages=tuple((pool_key(p.pool), p.nbytes, 0) for p in a.pools),
        )
    ]


def _outside_split(a: DeviceAssessment, acc: Accounting | None) -> tuple[int, int]:
    """(growth outside PyTorch the framework's holders explain, the rest)."""
    growth = a.outside_growth or 0
    if acc is None:
        return 0, growth
    if a.context_bytes is not None and acc.of_kind("context"):
        # The context appeared during tracking and its size is measured: everything
        # outside PyTorch now is growth (the floor of the readings would hide memory
        # mapped in the first phase), less the framework's holders.
        now = a.reading.outside_torch or 0
        explained = framework_growth(acc, now, before=0)
        return explained, now - explained
    explained = framework_growth(acc, growth, before=a.baseline.outside_torch or 0)
    return explained, growth - explained


def _outside_advice(acc: Accounting | None) -> str:
    steps: list[str] = []
    if acc is not None and acc.of_kind("nccl"):
        steps.append(
            "call torch.distributed.destroy_process_group() for each live process group "
            "(its NCCL communicators) in shutdown"
        )
    if acc is not None and acc.of_kind("cumem"):
        steps.append("free what the cuMem allocator still maps (its tensors, or sleep/free it)")
    if acc is not None and acc.of_kind("library"):
        steps.append("free other libraries' pools (cupy: free_all_blocks())")
    steps.append("free memory of other libraries (TensorRT, custom cudaMalloc) in shutdown")
    return "; ".join(steps)


def _driver_findings(a: DeviceAssessment, acc: Accounting | None) -> list[Finding]:
    out: list[Finding] = []
    framework, rest = _outside_split(a, acc)
    if rest > a.driver_allowance:
        known = f"; outside PyTorch now: {acc.describe_outside()}" if acc is not None else ""
        handles = (
            f" (and {format_bytes(framework)} of library handles and context, not a leak)"
            if framework
            else ""
        )
        out.append(
            _finding(
                a,
                FindingKind.OUTSIDE_TORCH,
                rest,
                f"{format_bytes(rest)} more device memory is charged to this process outside "
                f"PyTorch's allocator than at baseline{handles} (tolerance "
                f"{format_bytes(a.driver_allowance)}){known}",
                leak=True,
                advice=_outside_advice(acc),
            )
        )
    if a.other_growth > a.driver_allowance:
        procs = tuple(p for p, growth in a.other_processes if growth > 0)
        names = ", ".join(f"{p.pid} ({p.name or '?'}) {format_bytes(p.used)}" for p in procs)
        out.append(
            _finding(
                a,
                FindingKind.OTHER_PROCESS,
                a.other_growth,
                f"{format_bytes(a.other_growth)} is held by "
                f"{plural(len(procs), 'other process', 'other processes')} "
                f"of this process tree: {names}",
                leak=True,
                advice="stop and join worker processes in shutdown",
                processes=procs,
            )
        )
    if "driver_used" in a.reasons:
        grown = (a.reading.driver_used or 0) - (a.baseline.driver_used or 0)
        out.append(
            _finding(
                a,
                FindingKind.OUTSIDE_TORCH,
                grown,
                f"the driver reports {format_bytes(grown)} more used on {a.device} than "
                "at baseline, with no per-process readings to attribute it",
                leak=True,
                advice="check other processes on the device (nvidia-smi / amd-smi)",
            )
        )
    return out


def _cache_advice(a: DeviceAssessment) -> str:
    if a.returnable is None:
        return (
            "torch.cuda.empty_cache() returns the cached segments nothing is allocated "
            "in and no live CUDA graph or MemPool keeps"
        )
    if a.returnable > 0:
        return f"torch.cuda.empty_cache() would return {format_bytes(a.returnable)}"
    return (
        "torch.cuda.empty_cache() would return nothing now: every cached segment "
        "still holds a live block (fragmentation)"
    )


def _info_findings(a: DeviceAssessment, workspace: int, acc: Accounting | None) -> list[Finding]:
    out: list[Finding] = []
    cache = None if a.cache_growth is None else a.cache_growth - a.pool_growth
    if cache is not None and cache > a.allowance:
        out.append(
            _finding(
                a,
                FindingKind.ALLOCATOR_CACHE,
                cache,
                f"the caching allocator holds {format_bytes(cache)} more cached "
                "(reserved, not allocated) than at baseline; not a leak",
                leak=False,
                advice=(
                    f"{_cache_advice(a)}; free old buffers before allocating bigger ones "
                    "to lower the peak"
                ),
            )
        )
    framework, rest = _outside_split(a, acc)
    growth = framework + rest
    if growth > a.allowance and rest <= a.driver_allowance:
        if acc is None:
            what = " (cuBLAS handles and lazily loaded kernels stay for the process' life)"
        else:
            what = (
                f" ({format_bytes(framework)} of it library handles and context); outside "
                f"PyTorch now: {acc.describe_outside()}"
            )
        out.append(
            _finding(
                a,
                FindingKind.OUTSIDE_TORCH,
                growth,
                f"{format_bytes(growth)} more is charged to this process outside PyTorch "
                "than at baseline, within the driver-level tolerance of "
                f"{format_bytes(a.driver_allowance)}{what}",
                leak=False,
            )
        )
    if workspace > 0:
        out.append(
            _finding(
                a,
                FindingKind.WORKSPACE,
                workspace,
                f"{format_bytes(workspace)} of framework workspaces (cuBLAS) were freed "
                "while settling; not a leak",
                leak=False,
            )
        )
    if a.context_bytes:
        measured = acc.of_kind("context") if acc is not None else ()
        size = measured[0].nbytes if measured else a.context_bytes
        how = "measured once for this device" if measured else "estimated from its first reading"
        out.append(
            _finding(
                a,
                FindingKind.CONTEXT,
                size,
                f"the device context was created during tracking and takes "
                f"{format_bytes(size)} outside PyTorch for the process' life ({how})",
                leak=False,
            )
        )
    return out

"""NvmlBackend against a hand-written pynvml fake, and against the real pynvml here."""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from memdiag.backends.base import Backend, BackendUnavailable
from memdiag.backends.nvml import NvmlBackend, nvml_device_count
from memdiag.processes import proctree
from memdiag.values.readings import DeviceReading

MiB = 1024**2
GiB = 1024**3


def _load_fake(name: str) -> ModuleType:
    """Import ``tests/fakes/<name>.py`` without making ``tests`` a package."""
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "fakes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fake = _load_fake("fake_pynvml")

UUIDS = [
    "GPU-aaaa1111-0000-0000-0000-000000000000",
    "GPU-bbbb2222-0000-0000-0000-000000000000",
    "GPU-bbbb3333-0000-0000-0000-000000000000",
]


def _gpus() -> list[Any]:
    return [
        fake.FakeGpu(uuid=u, total=(i + 1) * 10 * GiB, used=i * GiB) for i, u in enumerate(UUIDS)
    ]


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def nvml() -> Any:
    return fake.FakeNvml(_gpus())


@pytest.fixture
def backend(nvml: Any) -> Iterator[NvmlBackend]:
    b = NvmlBackend(module=nvml)
    yield b
    b.close()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    deadline = time.monotonic() + 10  # /proc/PID/cmdline is empty in the middle of exec
    while "time.sleep" not in proctree.cmdline(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


def _unused_pid() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


# -- availability -------------------------------------------------------------------


def test_speaks_the_backend_protocol(backend: NvmlBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.name == "nvml"
    assert backend.probe().available


def test_missing_pynvml_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError

    availability = NvmlBackend().probe()

    assert not availability.available
    assert availability.reason.startswith("nvidia-ml-py: ")
    assert "install nvidia-ml-py" in availability.reason
    assert NvmlBackend().devices() == ()


def test_pynvml_broken_at_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pynvml.py").write_text("raise OSError('libc mismatch')\n")
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))

    availability = NvmlBackend().probe()

    assert not availability.available
    assert "OSError: libc mismatch" in availability.reason
    assert "\n" not in availability.reason


def _nvml_loadable() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_loadable(), reason="this machine has an NVIDIA driver")
def test_real_pynvml_without_driver_is_unavailable() -> None:
    backend = NvmlBackend()

    availability = backend.probe()

    assert not availability.available
    assert "NVML Shared Library Not Found" in availability.reason
    assert "NVIDIA driver" in availability.reason
    assert backend.devices() == ()
    with pytest.raises(BackendUnavailable, match="NVML Shared Library Not Found"):
        backend.read("cuda:0")
    backend.close()
    assert nvml_device_count() == 0


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (fake.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"),
        (fake.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
        (fake.NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"),
    ],
)
def test_init_error_makes_it_unavailable(code: int, words: str) -> None:
    nvml = fake.FakeNvml(_gpus(), init_error=code)
    backend = NvmlBackend(module=nvml)

    availability = backend.probe()

    assert not availability.available
    assert availability.reason == (
        f"nvidia-ml-py: nvmlInit failed: {words} (NVML ships with the NVIDIA driver "
        "as libnvidia-ml.so.1; is the driver installed?)"
    )
    backend.close()
    assert nvml.shutdown_calls == 0  # never initialised, so never shut down


def test_listing_error_makes_it_unavailable_and_shuts_down() -> None:
    nvml = fake.FakeNvml(_gpus())
    nvml.fail["nvmlDeviceGetCount"] = fake.NVML_ERROR_UNKNOWN
    backend = NvmlBackend(module=nvml)

    availability = backend.probe()

    assert availability.reason == "nvidia-ml-py: listing devices failed: Unknown Error"
    assert nvml.shutdown_calls == 1


def test_init_once_and_close_once(nvml: Any) -> None:
    backend = NvmlBackend(module=nvml)
    backend.probe()
    backend.devices()
    backend.read("cuda:0")

    backend.close()
    backend.close()

    assert (nvml.init_calls, nvml.shutdown_calls) == (1, 1)
    assert not backend.probe().available
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.read("cuda:0")


def test_nothing_happens_before_first_use(nvml: Any) -> None:
    NvmlBackend(module=nvml)

    assert nvml.init_calls == 0


# -- device naming ------------------------------------------------------------------


def _uuids(backend: NvmlBackend) -> list[str]:
    return [backend.uuid(d) for d in backend.devices()]


def test_default_order_is_nvml_index_order(backend: NvmlBackend) -> None:
    assert backend.devices() == ("cuda:0", "cuda:1", "cuda:2")
    assert _uuids(backend) == UUIDS
    assert backend.read("cuda:2").total == 30 * GiB


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("2,0", [UUIDS[2], UUIDS[0]]),
        (" 1 , 0 ", [UUIDS[1], UUIDS[0]]),
        ("GPU-bbbb3333,0", [UUIDS[2], UUIDS[0]]),
        ("gpu-AAAA1111-0000-0000-0000-000000000000", [UUIDS[0]]),
        ("0,7,1", [UUIDS[0]]),  # CUDA stops at the first entry naming no device
        ("1,-1,0", [UUIDS[1]]),
        ("1,1,0", [UUIDS[1]]),  # ... or at a repeat
        ("GPU-bbbb,0", []),  # an ambiguous prefix names no device
        ("GPU-ffff", []),
        ("", []),  # set but empty: no device at all
    ],
)
def test_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, nvml: Any, spec: str, expected: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", spec)
    backend = NvmlBackend(module=nvml)

    assert backend.devices() == tuple(f"cuda:{i}" for i in range(len(expected)))
    assert _uuids(backend) == expected
    backend.close()


def test_visible_devices_argument_overrides_environment(
    monkeypatch: pytest.MonkeyPatch, nvml: Any
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    backend = NvmlBackend(module=nvml, visible_devices="2")

    assert _uuids(backend) == [UUIDS[2]]
    assert backend.read("cuda:0").total == 30 * GiB
    backend.close()


def test_mig_devices_by_name_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = _gpus()
    mig_a = fake.FakeGpu(uuid="MIG-1234aaaa-0000", total=5 * GiB, used=GiB)
    mig_b = fake.FakeGpu(uuid="MIG-5678bbbb-0000", total=5 * GiB)
    gpus[1].mig = [mig_a, None, mig_b]
    nvml = fake.FakeNvml(gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-5678bbbb-0000,MIG-1234")
    backend = NvmlBackend(module=nvml)

    assert _uuids(backend) == ["MIG-5678bbbb-0000", "MIG-1234aaaa-0000"]
    assert backend.read("cuda:1").driver_used == GiB
    backend.close()


def test_unknown_device_is_unavailable(backend: NvmlBackend) -> None:
    with pytest.raises(
        BackendUnavailable,
        match=r"^nvml: no device cuda:3 \(NVML sees: cuda:0, cuda:1, cuda:2\)$",
    ):
        backend.read("cuda:3")


def test_nvml_device_count(nvml: Any) -> None:
    assert nvml_device_count(module=nvml) == 3
    assert nvml_device_count(module=nvml, visible_devices="2,0") == 2
    assert nvml_device_count(module=nvml, visible_devices="") == 0
    assert nvml.init_calls == nvml.shutdown_calls == 3
    broken = fake.FakeNvml(_gpus(), init_error=fake.NVML_ERROR_DRIVER_NOT_LOADED)
    assert nvml_device_count(module=broken) == 0


# -- readings -----------------------------------------------------------------------


def test_reading_attributes_the_process_tree(
    nvml: Any, backend: NvmlBackend, child: subprocess.Popen[bytes]
) -> None:
    me, stranger, ghost = os.getpid(), os.getppid(), _unused_pid()
    gpu = nvml.devices[0]
    gpu.used = 3 * GiB
    gpu.processes = {me: 50 * MiB, child.pid: 100 * MiB, stranger: 400 * MiB, ghost: 7 * MiB}

    reading = backend.read("cuda:0")

    assert reading.device == "cuda:0"
    assert reading.sources == ("nvml",)
    assert (reading.total, reading.driver_used) == (10 * GiB, 3 * GiB)
    assert reading.process_used == 150 * MiB  # this process and its child only
    assert [(p.pid, p.used) for p in reading.processes] == [
        (stranger, 400 * MiB),
        (child.pid, 100 * MiB),
        (me, 50 * MiB),
        (ghost, 7 * MiB),
    ]
    names = {p.pid: p.name for p in reading.processes}
    assert names[child.pid].endswith("-c import time; time.sleep(30)")
    assert names[stranger] == ""  # only the tree's processes are named (keeps reads cheap)
    assert names[ghost] == ""
    assert reading.extra["own_used"] == 50 * MiB
    assert {me, child.pid} <= set(reading.extra["tree_pids"])
    assert stranger not in reading.extra["tree_pids"]
    assert reading.extra["pids_not_visible"] == [ghost]
    assert reading.extra["uuid"] == UUIDS[0]

    gpu.processes[child.pid] = 300 * MiB  # the child grows between reads
    del gpu.processes[me]
    gpu.used += 150 * MiB  # and the device's used bytes move with it

    again = backend.read("cuda:0")

    assert again.process_used == 300 * MiB
    assert again.extra["own_used"] == 0
    assert again.time >= reading.time


def test_an_unrelated_process_alone_charges_nothing(nvml: Any, backend: NvmlBackend) -> None:
    nvml.devices[0].processes = {os.getppid(): GiB}

    reading = backend.read("cuda:0")

    assert reading.process_used == 0
    assert reading.extra["own_used"] == 0
    assert len(reading.processes) == 1


def test_used_gpu_memory_unavailable(
    nvml: Any, backend: NvmlBackend, child: subprocess.Popen[bytes]
) -> None:
    nvml.devices[0].processes = {os.getpid(): None, child.pid: 100 * MiB}

    reading = backend.read("cuda:0")

    assert reading.process_used is None
    assert reading.extra["own_used"] is None
    assert reading.extra["used_unknown_pids"] == [os.getpid()]
    assert "usedGpuMemory unavailable" in reading.extra["note"]
    assert [p.pid for p in reading.processes] == [child.pid]


def test_unknown_usage_of_a_stranger_leaves_ours_known(nvml: Any, backend: NvmlBackend) -> None:
    nvml.devices[0].processes = {os.getpid(): 10 * MiB, os.getppid(): None}

    reading = backend.read("cuda:0")

    assert reading.process_used == 10 * MiB
    assert reading.extra["used_unknown_pids"] == [os.getppid()]


def test_graphics_and_compute_contexts_are_merged(nvml: Any, backend: NvmlBackend) -> None:
    me = os.getpid()
    nvml.devices[0].processes = {me: 64 * MiB}
    nvml.devices[0].graphics = {me: 64 * MiB, os.getppid(): 32 * MiB}

    reading = backend.read("cuda:0")

    assert [(p.pid, p.used) for p in reading.processes] == [
        (me, 64 * MiB),
        (os.getppid(), 32 * MiB),
    ]
    assert reading.process_used == 64 * MiB


def test_graphics_not_supported_is_not_an_error() -> None:
    nvml = fake.FakeNvml(_gpus(), graphics_supported=False)
    nvml.devices[0].processes = {os.getpid(): MiB}
    backend = NvmlBackend(module=nvml)

    assert backend.read("cuda:0").process_used == MiB
    backend.close()


@pytest.mark.parametrize(
    "call", ["nvmlDeviceGetMemoryInfo", "nvmlDeviceGetComputeRunningProcesses"]
)
def test_call_error_during_read(nvml: Any, backend: NvmlBackend, call: str) -> None:
    backend.read("cuda:1")
    nvml.fail[call] = fake.NVML_ERROR_GPU_IS_LOST
    nvml.devices[1].used += MiB  # moved: the processes are listed again

    with pytest.raises(BackendUnavailable, match=r"^nvml: reading cuda:1 failed: GPU is lost$"):
        backend.read("cuda:1")

    del nvml.fail[call]
    assert backend.read("cuda:1").total == 20 * GiB  # the next read may succeed again


def test_reading_is_json_safe(nvml: Any, backend: NvmlBackend) -> None:
    nvml.devices[0].processes = {os.getpid(): MiB}

    reading = backend.read("cuda:0")

    assert DeviceReading.from_json(json.loads(json.dumps(reading.to_json()))) == reading


def test_reset_peak_and_settle_touch_nothing(nvml: Any, backend: NvmlBackend) -> None:
    backend.probe()
    before = list(nvml.calls)

    backend.reset_peak("cuda:0")
    backend.settle("cuda:0")

    assert nvml.calls == before


def test_processes_are_listed_again_only_when_the_device_bytes_move(
    nvml: Any, backend: NvmlBackend
) -> None:
    gpu = nvml.devices[0]
    gpu.processes = {os.getpid(): 64 * MiB}
    assert backend.read("cuda:0").process_used == 64 * MiB
    listed = nvml.calls.count("nvmlDeviceGetComputeRunningProcesses")

    again = backend.read("cuda:0")  # nothing moved: the last listing stands

    assert again.process_used == 64 * MiB
    assert nvml.calls.count("nvmlDeviceGetComputeRunningProcesses") == listed

    gpu.processes = {os.getpid(): 96 * MiB}
    gpu.used += 32 * MiB

    assert backend.read("cuda:0").process_used == 96 * MiB
    assert nvml.calls.count("nvmlDeviceGetComputeRunningProcesses") == listed + 1


def test_a_reading_from_the_same_listing_of_this_process_alone_is_reused(
    nvml: Any, backend: NvmlBackend
) -> None:
    gpu = nvml.devices[0]
    gpu.processes = {os.getpid(): 64 * MiB}
    first = backend.read("cuda:0")
    again = backend.read("cuda:0")
    assert dataclasses.replace(again, time=first.time) == first
    assert again.time >= first.time

    # another process on the device: its tree membership is looked up at every reading
    gpu.processes = {os.getpid(): 64 * MiB, 999_999: 8 * MiB}
    gpu.used += 8 * MiB
    with_other = backend.read("cuda:0")
    assert [p.pid for p in with_other.processes] == [os.getpid(), 999_999]
    assert with_other.extra.get("pids_not_visible") == [999_999]
    assert backend.read("cuda:0").extra.get("pids_not_visible") == [999_999]

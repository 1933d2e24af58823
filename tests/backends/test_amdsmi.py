"""AmdSmiBackend against a hand-written amdsmi fake, and against a broken real import."""

from __future__ import annotations

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

from memdiag.backends.amdsmi_backend import AmdSmiBackend, visible_indexes
from memdiag.backends.base import Backend, BackendUnavailable
from memdiag.processes import proctree
from memdiag.values.readings import DeviceReading

MiB = 1024**2
GiB = 1024**3
INSTALL = "(install ROCm's amdsmi; pip install memdiag[rocm])"


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


fake = _load_fake("fake_amdsmi")


def _gpus() -> list[Any]:
    return [fake.FakeAmdGpu(total=(i + 1) * 64 * GiB, used=i * GiB) for i in range(4)]


@pytest.fixture
def smi() -> Any:
    return fake.FakeAmdSmi(_gpus())


@pytest.fixture
def backend(smi: Any) -> Iterator[AmdSmiBackend]:
    b = AmdSmiBackend(module=smi, environ={})
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


def test_speaks_the_backend_protocol(backend: AmdSmiBackend, smi: Any) -> None:
    assert isinstance(backend, Backend)
    assert backend.name == "amdsmi"
    assert backend.probe().available
    assert smi.init_flags == [fake.AmdSmiInitFlags.INIT_AMD_GPUS]


def test_missing_amdsmi_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # import raises ImportError

    availability = AmdSmiBackend().probe()

    assert not availability.available
    assert availability.reason.startswith("amdsmi: ")
    assert availability.reason.endswith(INSTALL)


@pytest.mark.parametrize(
    ("raising", "words"),
    [
        # What the real package does when ROCm's libamd_smi.so is absent.
        ("raise KeyError('libamd_smi.so')", "KeyError: 'libamd_smi.so'"),
        (
            "raise OSError('libamd_smi.so: cannot open shared object file')",
            "OSError: libamd_smi.so: cannot open shared object file",
        ),
    ],
)
def test_amdsmi_broken_at_import(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, raising: str, words: str
) -> None:
    package = tmp_path / "amdsmi"
    package.mkdir()
    (package / "__init__.py").write_text(f"{raising}\n")
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    backend = AmdSmiBackend()

    availability = backend.probe()

    assert not availability.available
    assert availability.reason == f"amdsmi: import failed with {words} {INSTALL}"
    assert backend.devices() == ()
    with pytest.raises(BackendUnavailable, match=r"libamd_smi\.so"):
        backend.read("cuda:0")


def test_real_amdsmi_probe_never_raises() -> None:
    backend = AmdSmiBackend()

    availability = backend.probe()

    assert availability.available or availability.reason.startswith("amdsmi: ")
    backend.close()


def test_init_error_makes_it_unavailable() -> None:
    smi = fake.FakeAmdSmi(_gpus(), init_error=fake.AMDSMI_STATUS_DRIVER_NOT_LOADED)
    backend = AmdSmiBackend(module=smi, environ={})

    availability = backend.probe()

    assert availability.reason == (
        "amdsmi: amdsmi_init failed: An error occured with code: 34"
        "(AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded) (is the amdgpu driver loaded?)"
    )
    backend.close()
    assert smi.shutdown_calls == 0


def test_listing_error_makes_it_unavailable_and_shuts_down(smi: Any) -> None:
    smi.fail["amdsmi_get_processor_handles"] = fake.AMDSMI_STATUS_NOT_SUPPORTED
    backend = AmdSmiBackend(module=smi, environ={})

    availability = backend.probe()

    assert availability.reason.startswith("amdsmi: listing devices failed: ")
    assert "NOT_SUPPORTED" in availability.reason
    assert smi.shutdown_calls == 1


def test_init_once_and_close_once(smi: Any) -> None:
    backend = AmdSmiBackend(module=smi, environ={})
    backend.probe()
    backend.read("cuda:0")

    backend.close()
    backend.close()

    assert (len(smi.init_flags), smi.shutdown_calls) == (1, 1)
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.read("cuda:0")


# -- device naming ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, [0, 1, 2, 3]),
        ({"HIP_VISIBLE_DEVICES": "2,0"}, [2, 0]),
        ({"CUDA_VISIBLE_DEVICES": "3"}, [3]),
        ({"HIP_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "3"}, [1]),  # HIP wins
        ({"ROCR_VISIBLE_DEVICES": "1,3"}, [1, 3]),
        ({"ROCR_VISIBLE_DEVICES": "1,3", "HIP_VISIBLE_DEVICES": "1"}, [3]),  # ROCR, then HIP
        ({"HIP_VISIBLE_DEVICES": "0,9,1"}, [0]),  # stops at a device that does not exist
        ({"HIP_VISIBLE_DEVICES": "0,0,1"}, [0]),  # ... or at a repeat
        ({"HIP_VISIBLE_DEVICES": "GPU-1234,1"}, []),  # UUIDs are not mapped
        ({"HIP_VISIBLE_DEVICES": ""}, []),
    ],
)
def test_visible_devices(smi: Any, environ: dict[str, str], expected: list[int]) -> None:
    assert visible_indexes(4, environ) == expected
    backend = AmdSmiBackend(module=smi, environ=environ)

    assert backend.devices() == tuple(f"cuda:{i}" for i in range(len(expected)))
    assert [backend.read(d).total for d in backend.devices()] == [
        (i + 1) * 64 * GiB for i in expected
    ]
    backend.close()


def test_visible_devices_from_the_environment(monkeypatch: pytest.MonkeyPatch, smi: Any) -> None:
    monkeypatch.delenv("ROCR_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "3,1")
    backend = AmdSmiBackend(module=smi)

    assert backend.read("cuda:0").total == 256 * GiB
    assert backend.devices() == ("cuda:0", "cuda:1")
    backend.close()


def test_unknown_device_is_unavailable(backend: AmdSmiBackend) -> None:
    with pytest.raises(BackendUnavailable, match=r"^amdsmi: no device cuda:4 \(amdsmi sees: "):
        backend.read("cuda:4")


# -- readings -----------------------------------------------------------------------


def test_reading_attributes_the_process_tree(
    smi: Any, backend: AmdSmiBackend, child: subprocess.Popen[bytes]
) -> None:
    me, stranger, ghost = os.getpid(), os.getppid(), _unused_pid()
    gpu = smi.devices[0]
    gpu.used = 5 * GiB + 123  # bytes, not MB: nothing is rounded away
    gpu.processes = {me: 50 * MiB, child.pid: 100 * MiB, stranger: GiB, ghost: 7 * MiB}
    gpu.names = {ghost: "vllm-worker"}

    reading = backend.read("cuda:0")

    assert reading.sources == ("amdsmi",)
    assert (reading.total, reading.driver_used) == (64 * GiB, 5 * GiB + 123)
    assert reading.process_used == 150 * MiB
    assert [(p.pid, p.used) for p in reading.processes] == [
        (stranger, GiB),
        (child.pid, 100 * MiB),
        (me, 50 * MiB),
        (ghost, 7 * MiB),
    ]
    names = {p.pid: p.name for p in reading.processes}
    assert names[child.pid].endswith("-c import time; time.sleep(30)")
    assert names[ghost] == "vllm-worker"  # not in our /proc: amdsmi's own name
    assert reading.extra["own_used"] == 50 * MiB
    assert reading.extra["pids_not_visible"] == [ghost]
    assert child.pid in reading.extra["tree_pids"]

    gpu.processes[child.pid] = 0  # the driver has released the child's VRAM
    assert backend.read("cuda:0").process_used == 50 * MiB


def test_an_unrelated_process_alone_charges_nothing(smi: Any, backend: AmdSmiBackend) -> None:
    smi.devices[1].processes = {os.getppid(): GiB}

    reading = backend.read("cuda:1")

    assert reading.process_used == 0
    assert reading.extra["own_used"] == 0


def test_vram_not_available_for_a_process(
    smi: Any, backend: AmdSmiBackend, child: subprocess.Popen[bytes]
) -> None:
    smi.devices[0].processes = {child.pid: None, os.getpid(): MiB}

    reading = backend.read("cuda:0")

    assert reading.process_used is None
    assert reading.extra["used_unknown_pids"] == [child.pid]
    assert [p.pid for p in reading.processes] == [os.getpid()]


def test_legacy_api_megabytes_and_process_handles(child: subprocess.Popen[bytes]) -> None:
    gpus = _gpus()
    gpus[0].used = 3 * GiB + 5 * MiB + 17
    gpus[0].processes = {os.getpid(): 8 * MiB, child.pid: 2 * MiB, os.getppid(): MiB}
    smi = fake.LegacyFakeAmdSmi(gpus)
    smi.vanished.add(os.getppid())  # exited between the list and the info call
    backend = AmdSmiBackend(module=smi, environ={})

    reading = backend.read("cuda:0")

    assert not hasattr(smi, "amdsmi_get_gpu_memory_usage")
    assert (reading.total, reading.driver_used) == (64 * GiB, 3 * GiB + 5 * MiB)
    assert reading.process_used == 10 * MiB
    assert sorted(p.pid for p in reading.processes) == sorted([os.getpid(), child.pid])
    backend.close()


@pytest.mark.parametrize(
    "call",
    [
        "amdsmi_get_gpu_memory_total",
        "amdsmi_get_gpu_memory_usage",
        "amdsmi_get_gpu_process_list",
    ],
)
def test_call_error_during_read(smi: Any, backend: AmdSmiBackend, call: str) -> None:
    backend.read("cuda:2")
    smi.fail[call] = fake.AMDSMI_STATUS_NOT_FOUND

    with pytest.raises(
        BackendUnavailable,
        match=r"^amdsmi: reading cuda:2 failed: An error occured with code: 31\(",
    ):
        backend.read("cuda:2")

    del smi.fail[call]
    assert backend.read("cuda:2").total == 192 * GiB


def test_reading_is_json_safe(smi: Any, backend: AmdSmiBackend) -> None:
    smi.devices[0].processes = {os.getpid(): MiB}

    reading = backend.read("cuda:0")

    assert DeviceReading.from_json(json.loads(json.dumps(reading.to_json()))) == reading


def test_reset_peak_and_settle_are_harmless(smi: Any, backend: AmdSmiBackend) -> None:
    before = backend.read("cuda:0")

    backend.reset_peak("cuda:0")
    backend.settle("cuda:0")

    assert backend.read("cuda:0").driver_used == before.driver_used
    assert smi.shutdown_calls == 0

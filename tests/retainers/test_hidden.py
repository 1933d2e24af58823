"""Storages held from C++ (autograd graphs, TorchScript modules, arrays) are found and
named by the global that holds them; real leaks, on CPU."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import memdiag
from memdiag.cli import main
from memdiag.heap.census import live_cpu_bytes
from memdiag.heap.hidden import find_hidden
from memdiag.retainers import analyze
from memdiag.values.findings import FindingKind
from tests.retainers.leaks import targets_of

LOSS_KEPT = """
import torch
total_loss = 0
def train():
    global total_loss
    model = torch.nn.Linear(512, 512)
    for _ in range(4):
        x = torch.randn(2048, 512)
        loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(2048, dtype=torch.long))
        total_loss += loss{detach}
train()
"""


def _run(tmp_path: Path, body: str) -> tuple[int, dict[str, Any]]:
    script = tmp_path / "train.py"
    script.write_text(body)
    out = tmp_path / "r.json"
    code = main(["run", "--device", "cpu", "--json", str(out), str(script)])
    return code, json.loads(out.read_text())


def test_stored_loss_keeps_its_autograd_graph_and_names_the_global(tmp_path: Path) -> None:
    code, data = _run(tmp_path, LOSS_KEPT.format(detach=""))
    assert code == 1
    first = data["findings"][0]
    assert first["kind"] == "live_tensors"
    # Four graphs, each saving the 2048 x 512 input and log-probs (4 MiB each) that
    # no Python tensor refers to: counted, and charged to the global.
    assert first["bytes"] >= 4 * 2 * 4 * 1024**2
    chain = first["retainers"][0]["chain_text"]
    assert chain.startswith("__main__.total_loss -> .grad_fn -> AddBackward0"), chain
    assert "_saved_" in chain
    assert sum(g["retained_bytes"] for g in first["retainers"]) == first["bytes"]


def test_detached_loss_is_clean(tmp_path: Path) -> None:
    code, data = _run(tmp_path, LOSS_KEPT.format(detach=".detach()"))
    assert code == 0, data["findings"]


def test_saved_tensors_without_a_python_object_count_on_cpu() -> None:
    w = torch.nn.Linear(256, 256)
    before = live_cpu_bytes()
    loss = torch.nn.functional.cross_entropy(
        w(torch.randn(1024, 256)), torch.zeros(1024, dtype=torch.long)
    )
    # input (1 MiB) and log-probs (1 MiB) live only inside the graph
    assert live_cpu_bytes() - before >= 2 * 1024**2
    del loss
    assert live_cpu_bytes() - before < 4096


def test_grad_of_a_leaf_is_followed(leak_module: types.ModuleType) -> None:
    weight = torch.zeros(512, 512, requires_grad=True)
    (weight * 2).sum().backward()
    leak_module.PARAMS = [weight]
    grad_key = targets_of([weight.grad])
    report = analyze(grad_key)
    (group,) = report.groups
    assert group.chain_text().startswith(f"{leak_module.__name__}.PARAMS -> [0].grad"), (
        group.chain_text()
    )


def test_saved_tensor_hooks_never_run() -> None:
    calls: list[str] = []
    x = torch.ones(8, requires_grad=True)

    def pack(t: torch.Tensor) -> tuple[str, torch.Tensor]:
        return ("packed", t * 1)

    def unpack(p: tuple[str, torch.Tensor]) -> torch.Tensor:
        calls.append("unpack")
        return p[1]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = (x * x).sum()
    hidden = find_hidden([y])
    assert calls == []
    labels = [label for edges in hidden.edges.values() for label, _ in edges]
    assert any("packed by a saved-tensor hook" in label for label in labels), labels


@pytest.mark.parametrize("how", ["trace", "script"])
def test_torchscript_module_in_a_cache_is_the_root(leak_module: types.ModuleType, how: str) -> None:
    with memdiag.track(device="cpu", settle=0.0) as tracker:
        model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 1024))
        if how == "trace":
            compiled = torch.jit.trace(model, torch.ones(1, 1024))
        else:
            compiled = torch.jit.script(model)
        leak_module.COMPILED = {"model": compiled}
        del model, compiled
    result = tracker.result
    assert result is not None and result.leaked
    first = result.findings[0]
    assert first.kind is FindingKind.LIVE_TENSORS and first.nbytes >= 8 * 1024**2
    chain = first.retainers[0].chain_text()
    assert chain.startswith(f"{leak_module.__name__}.COMPILED -> ['model']"), chain
    assert "ScriptModule -> .0 -> ScriptModule -> .weight" in chain
    assert first.retainers[0].retained_bytes >= 4 * 1024**2
    leak_module.COMPILED.clear()


def test_numpy_view_of_a_tensor_names_the_global(leak_module: types.ModuleType) -> None:
    np = pytest.importorskip("numpy")
    with memdiag.track(device="cpu", settle=0.0) as tracker:
        leak_module.ARRAY = torch.zeros(2048, 1024).numpy()
    result = tracker.result
    assert result is not None and result.leaked
    first = result.findings[0]
    assert first.nbytes == 8 * 1024**2
    chain = first.retainers[0].chain_text()
    assert chain.startswith(f"{leak_module.__name__}.ARRAY -> .base"), chain
    assert isinstance(leak_module.ARRAY, np.ndarray)


def test_array_sharing_a_storage_by_pointer_is_followed(leak_module: types.ModuleType) -> None:
    np = pytest.importorskip("numpy")
    tensor = torch.zeros(1024, 1024)
    leak_module.ARRAY = np.from_dlpack(tensor)  # .base is a capsule, not the tensor
    report = analyze(targets_of([tensor]))
    texts = [g.chain_text() for g in report.groups]
    expected = f"{leak_module.__name__}.ARRAY -> (shares memory at 0x"
    assert any(t.startswith(expected) for t in texts), texts


def test_nothing_hidden_without_grad_graphs_or_arrays() -> None:
    assert not find_hidden([torch.zeros(4), object(), {"a": 1}])


def test_the_array_search_runs_only_when_an_array_may_hold_a_target(
    leak_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("numpy")
    from memdiag.retainers import analysis

    searches: list[bool] = []
    real = analysis.find_hidden

    def spy(objects: Any, **kw: Any) -> Any:
        searches.append(bool(kw.get("arrays")))
        return real(objects, **kw)

    monkeypatch.setattr(analysis, "find_hidden", spy)
    leak_module.PLAIN = torch.zeros(1024)
    report = analyze(targets_of([leak_module.PLAIN]))
    assert report.groups[0].chain_text().startswith(f"{leak_module.__name__}.PLAIN")
    assert searches == [False], "every reference to the tensor is accounted for"

    searches.clear()
    leak_module.ARRAY = torch.zeros(1024).numpy()  # the tensor's only referrer: an array
    report = analyze(targets_of([leak_module.ARRAY.base]))
    assert searches == [False, True]
    chain = report.groups[0].chain_text()
    assert chain.startswith(f"{leak_module.__name__}.ARRAY -> .base"), chain

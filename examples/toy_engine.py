"""A toy inference engine that reproduces real GPU-memory-leak bugs, one per switch.

    python examples/toy_engine.py [--device cpu|cuda|auto] [--bug NAME ...] [--fixed]
    python examples/toy_engine.py --list-bugs

The engine has the create / infer / shutdown life cycle of an in-process LLM engine:
``ToyEngine.create(config)`` builds a small transformer (embedding, N layers of
attention and MLP, rotary embeddings from a cached helper), a KV cache, a workspace and
a background detokenizer thread; ``engine.generate(prompt_ids, max_new_tokens)`` runs
real forward passes; ``engine.shutdown()`` releases everything unless a ``--bug`` makes
it skip a step. ``--fixed`` keeps the feature a bug is attached to (``gc.freeze()``)
but shuts down correctly. Each phase is announced through ``memdiag.phase(name)`` when
memdiag is importable, and to nobody otherwise.

The engine runs unchanged on CPU and CUDA; everything is float32 and small, each piece
of a distinct size so that a leak report can be matched to its bug: 10.0 MiB of
weights, a 4 MiB KV cache, 2 MiB of rotary tables, a 3 MiB detokenizer staging buffer
and a 12 MiB workspace that grows to 24 MiB. A CPU run takes well under a second.
Tests that run ``main()`` in-process call ``reset_module_state()`` afterwards: the bugs
leave state in this module on purpose.
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BUGS",
    "Bug",
    "EngineConfig",
    "ToyEngine",
    "Workspace",
    "main",
    "phase",
    "reset_module_state",
    "resolve_device",
    "rope_cos_sin",
    "supports_kw",
]

KiB = 1024
MiB = 1024 * KiB


# -- memdiag's phase API, optional -----------------------------------------------------


def _no_phase(name: str) -> None:
    """Stand-in for ``memdiag.phase`` when memdiag is not importable."""


def _load_phase() -> Callable[[str], object]:
    try:
        import memdiag
    except ImportError:
        return _no_phase
    return cast("Callable[[str], object]", getattr(memdiag, "phase", _no_phase))


phase = _load_phase()
"""``phase("create")`` marks the start of a phase (ending the previous one); a no-op
when no memdiag tracker is active or memdiag is not installed."""


# -- the bugs --------------------------------------------------------------------------


class Bug(NamedTuple):
    name: str
    leak: str
    fix: str


BUGS: dict[str, Bug] = {
    bug.name: bug
    for bug in (
        Bug(
            "lru_cache",
            "@functools.lru_cache supports_kw(model.forward, ...) keys on the bound "
            "method, so the cache keeps the model and its weights alive",
            "key on the unbound function type(model).forward",
        ),
        Bug(
            "gc_freeze",
            "gc.freeze() at create and no gc.unfreeze() at shutdown: the runner <-> "
            "sampler cycle (model, KV cache) is garbage but frozen, so gc.collect() "
            "never frees it",
            "gc.unfreeze() in shutdown before gc.collect()",
        ),
        Bug(
            "rope_cache",
            "module-level _ROPE_CACHE of rotary cos/sin tensors is never cleared",
            "_ROPE_CACHE.clear() in shutdown",
        ),
        Bug(
            "workspace_singleton",
            "Workspace._instance, a class-level singleton holding the workspace "
            "buffer, is never released",
            "Workspace.release() in shutdown",
        ),
        Bug(
            "resize_no_empty_cache",
            "the workspace grows while the old buffer is alive and "
            "torch.cuda.empty_cache() is never called: on CUDA both blocks stay "
            "reserved (allocator cache, no live tensor); no difference on CPU",
            "free the old buffer, empty_cache(), then allocate; empty_cache() after shutdown",
        ),
        Bug(
            "kv_cache",
            "shutdown forgets BlockManager.free(): the module-level "
            "_LIVE_BLOCK_MANAGERS registry keeps the block manager and its KV cache "
            "alive",
            "BlockManager.free() in shutdown (frees the KV cache, unregisters)",
        ),
        Bug(
            "thread",
            "the detokenizer thread is never stopped; its run() frame holds the token "
            "staging buffer in a local variable",
            "stop and join the thread in shutdown",
        ),
    )
}


# -- module-level state (the leaks live here) ------------------------------------------


@functools.lru_cache
def supports_kw(fn: Callable[..., object], kw_name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``kw_name`` (cached: slow)."""
    params = inspect.signature(fn).parameters
    if kw_name in params:
        return params[kw_name].kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


_ROPE_CACHE: dict[tuple[int, int, torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}
"""Rotary cos/sin tables keyed by (max_positions, head_dim, device, dtype)."""

_LIVE_BLOCK_MANAGERS: list[BlockManager] = []
"""Every block manager not yet freed, for KV-cache statistics across engines."""

_GC_FREEZES = 0
"""How many engines called gc.freeze() without the matching gc.unfreeze()."""


def rope_cos_sin(
    max_positions: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Rotary cos/sin tables, shape ``(max_positions, head_dim)``, from _ROPE_CACHE."""
    key = (max_positions, head_dim, device, dtype)
    cached = _ROPE_CACHE.get(key)
    if cached is None:
        exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
        inv_freq = 1.0 / (10000.0**exponents)
        positions = torch.arange(max_positions, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        cached = (angles.cos().to(dtype), angles.sin().to(dtype))
        _ROPE_CACHE[key] = cached
    return cached


class Workspace:
    """Process-wide scratch buffer shared by every engine (a singleton)."""

    _instance: ClassVar[Workspace | None] = None

    def __init__(self, nbytes: int, device: torch.device) -> None:
        self.buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    @classmethod
    def get(cls, nbytes: int, device: torch.device, *, free_before_grow: bool = True) -> Workspace:
        """The workspace, created or grown so that it holds at least ``nbytes``."""
        inst = cls._instance
        if inst is None or inst.buffer.device != device:
            inst = cls._instance = cls(nbytes, device)
        elif inst.nbytes < nbytes:
            inst.grow(nbytes, free_before_grow=free_before_grow)
        return inst

    @classmethod
    def release(cls) -> None:
        cls._instance = None

    def grow(self, nbytes: int, *, free_before_grow: bool) -> None:
        device = self.buffer.device
        if free_before_grow:
            self.buffer = torch.empty(0, dtype=torch.uint8, device=device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            self.buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
        else:
            # Copying the old contents keeps the old block alive while the new one is
            # allocated; dropped afterwards, it stays reserved in the CUDA caching
            # allocator until torch.cuda.empty_cache().
            old = self.buffer
            new = torch.empty(nbytes, dtype=torch.uint8, device=device)
            new[: old.numel()].copy_(old)
            self.buffer = new
            del old

    def view(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        return self.buffer[:nbytes].view(dtype).view(shape)


# -- the model -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    vocab_size: int = 1000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_seq_len: int = 512
    max_position_embeddings: int = 4096
    dtype: torch.dtype = torch.float32
    workspace_bytes: int = 12 * MiB
    workspace_bytes_per_token: int = 128 * KiB
    detok_buffer_shape: tuple[int, int] = (384, 1024)
    freeze_gc: bool = False
    bugs: frozenset[str] = frozenset()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        layer_kv: Tensor,
        context_len: int,
        cos: Tensor,
        sin: Tensor,
    ) -> Tensor:
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        layer_kv[0, positions] = k
        layer_kv[1, positions] = v
        keys = layer_kv[0, :context_len].transpose(0, 1)
        values = layer_kv[1, :context_len].transpose(0, 1)
        key_positions = torch.arange(context_len, device=x.device)
        mask = key_positions[None, :] <= positions[:, None]
        out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask)
        return cast(Tensor, self.o_proj(out.transpose(0, 1).reshape(n, -1)))


class MLP(nn.Module):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor, workspace: Workspace | None = None) -> Tensor:
        if workspace is None:
            h = self.up_proj(x)
        else:
            h = workspace.view((x.shape[0], self.intermediate_size), x.dtype)
            torch.matmul(x, self.up_proj.weight.t(), out=h)
        return cast(Tensor, self.down_proj(F.silu(h, inplace=True)))


class DecoderLayer(nn.Module):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.input_norm = nn.RMSNorm(config.hidden_size)
        self.attn = Attention(config)
        self.post_attn_norm = nn.RMSNorm(config.hidden_size)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        layer_kv: Tensor,
        context_len: int,
        cos: Tensor,
        sin: Tensor,
        workspace: Workspace | None,
    ) -> Tensor:
        x = x + self.attn(self.input_norm(x), positions, layer_kv, context_len, cos, sin)
        return x + cast(Tensor, self.mlp(self.post_attn_norm(x), workspace))


class ToyModel(nn.Module):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.max_positions = config.max_position_embeddings
        self.head_dim = config.head_dim
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.RMSNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        token_ids: Tensor,
        positions: Tensor,
        kv_cache: Tensor,
        context_len: int,
        *,
        workspace: Workspace | None = None,
    ) -> Tensor:
        """Logits of the last token; writes the new keys and values to ``kv_cache``."""
        x = self.embed(token_ids)
        cos, sin = rope_cos_sin(self.max_positions, self.head_dim, x.device, x.dtype)
        cos = cos[positions].unsqueeze(1)
        sin = sin[positions].unsqueeze(1)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, kv_cache[i], context_len, cos, sin, workspace)
        return cast(Tensor, self.lm_head(self.norm(x[-1])))


# -- the engine ------------------------------------------------------------------------


class BlockManager:
    """Owns the KV cache: ``(num_layers, 2, max_seq_len, num_heads, head_dim)``."""

    def __init__(self, config: EngineConfig) -> None:
        shape = (
            config.num_layers,
            2,
            config.max_seq_len,
            config.num_heads,
            config.head_dim,
        )
        self.kv_cache: Tensor | None = torch.zeros(shape, dtype=config.dtype, device=config.device)
        _LIVE_BLOCK_MANAGERS.append(self)

    def allocate(self, num_tokens: int) -> Tensor:
        if self.kv_cache is None:
            raise RuntimeError("the KV cache was freed")
        if num_tokens > self.kv_cache.shape[2]:
            raise ValueError(f"{num_tokens} tokens exceed max_seq_len {self.kv_cache.shape[2]}")
        return self.kv_cache

    def free(self) -> None:
        self.kv_cache = None
        if self in _LIVE_BLOCK_MANAGERS:
            _LIVE_BLOCK_MANAGERS.remove(self)


def live_kv_cache_bytes() -> int:
    """KV-cache bytes held by every block manager in the process."""
    return sum(_nbytes(bm.kv_cache) for bm in _LIVE_BLOCK_MANAGERS if bm.kv_cache is not None)


class Sampler:
    def __init__(self, runner: ModelRunner) -> None:
        # Back-reference: logits processors read runner state. Runner <-> sampler is a
        # reference cycle, so the runner is freed by the cyclic GC, not by refcounting.
        self.runner = runner

    def sample(self, logits: Tensor) -> int:
        return int(torch.argmax(logits[: self.runner.config.vocab_size]))


class ModelRunner:
    def __init__(self, config: EngineConfig, model: ToyModel, block_manager: BlockManager) -> None:
        self.config = config
        self.model = model
        self.block_manager = block_manager
        self.sampler = Sampler(self)

    def step(
        self,
        token_ids: list[int],
        start: int,
        kv_cache: Tensor,
        workspace: Workspace | None,
    ) -> int:
        device = self.config.device
        ids = torch.tensor(token_ids, dtype=torch.long, device=device)
        positions = torch.arange(start, start + len(token_ids), device=device)
        context_len = start + len(token_ids)
        if workspace is None:
            logits = self.model(ids, positions, kv_cache, context_len)
        else:
            logits = self.model(ids, positions, kv_cache, context_len, workspace=workspace)
        return self.sampler.sample(logits)


class Detokenizer(threading.Thread):
    """Background thread that turns sampled token ids into text."""

    def __init__(self, device: torch.device, buffer_shape: tuple[int, int]) -> None:
        super().__init__(name="toy-detokenizer", daemon=True)
        self._device = device
        self._buffer_shape = buffer_shape
        self._pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self.text_chars = 0

    def start_and_wait(self) -> None:
        self.start()
        self._ready.wait()

    def submit(self, token_id: int) -> None:
        self._pending.put(token_id)
        self._wakeup.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wakeup.set()
        self.join(timeout)

    def run(self) -> None:
        # The staging buffer lives only in this frame: alive as long as the thread.
        staging = torch.zeros(self._buffer_shape, dtype=torch.long, device=self._device)
        flat = staging.view(-1)
        count = 0
        self._ready.set()
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            if self._stopping.is_set():
                return
            while True:
                try:
                    token_id = self._pending.get_nowait()
                except queue.Empty:
                    break
                flat[count % flat.numel()] = token_id
                self.text_chars += len(f"<{token_id}>")
                count += 1


class ToyEngine:
    """create / generate / shutdown; ``config.bugs`` names the steps it gets wrong."""

    def __init__(self, config: EngineConfig, runner: ModelRunner, detokenizer: Detokenizer) -> None:
        self.config = config
        self.runner: ModelRunner | None = runner
        self.detokenizer = detokenizer
        self.froze_gc = False
        self.tokens_generated = 0

    @classmethod
    def create(cls, config: EngineConfig) -> ToyEngine:
        global _GC_FREEZES
        with torch.device(config.device):
            model = ToyModel(config).to(config.dtype).eval()
        runner = ModelRunner(config, model, BlockManager(config))
        Workspace.get(config.workspace_bytes, config.device)
        detokenizer = Detokenizer(config.device, config.detok_buffer_shape)
        detokenizer.start_and_wait()
        engine = cls(config, runner, detokenizer)
        if config.freeze_gc:
            # As serving engines do after start-up: everything alive now is exempt
            # from GC passes, which shortens pauses during inference.
            gc.collect()
            gc.freeze()
            engine.froze_gc = True
            _GC_FREEZES += 1
        return engine

    def weight_bytes(self) -> int:
        if self.runner is None:
            return 0
        return sum(_nbytes(p) for p in self.runner.model.parameters())

    def _model_accepts_workspace(self, model: ToyModel) -> bool:
        if "lru_cache" in self.config.bugs:
            return supports_kw(model.forward, "workspace")
        return supports_kw(type(model).forward, "workspace")

    def _workspace_for(self, num_tokens: int) -> Workspace:
        nbytes = max(
            self.config.workspace_bytes,
            num_tokens * self.config.workspace_bytes_per_token,
        )
        free_first = "resize_no_empty_cache" not in self.config.bugs
        return Workspace.get(nbytes, self.config.device, free_before_grow=free_first)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding of one sequence: a prefill step, then one per new token."""
        runner = self.runner
        if runner is None:
            raise RuntimeError("generate() after shutdown()")
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        kv_cache = runner.block_manager.allocate(len(prompt_ids) + max_new_tokens)
        workspace: Workspace | None = self._workspace_for(len(prompt_ids))
        if not self._model_accepts_workspace(runner.model):
            workspace = None
        new_ids: list[int] = []
        step_ids = list(prompt_ids)
        start = 0
        with torch.no_grad():
            for _ in range(max_new_tokens):
                next_id = runner.step(step_ids, start, kv_cache, workspace)
                self.detokenizer.submit(next_id)
                new_ids.append(next_id)
                start += len(step_ids)
                step_ids = [next_id]
        self.tokens_generated += len(new_ids)
        return new_ids

    def shutdown(self) -> None:
        bugs = self.config.bugs
        if "thread" not in bugs:
            self.detokenizer.stop()
        if "kv_cache" not in bugs and self.runner is not None:
            self.runner.block_manager.free()
        if "workspace_singleton" not in bugs:
            Workspace.release()
        if "rope_cache" not in bugs:
            _ROPE_CACHE.clear()
        # The runner <-> sampler cycle (model, KV cache) is now garbage for gc.
        self.runner = None
        if self.froze_gc and "gc_freeze" not in bugs:
            _unfreeze_gc()
            self.froze_gc = False
        gc.collect()
        if self.config.device.type == "cuda" and "resize_no_empty_cache" not in bugs:
            torch.cuda.empty_cache()


def _unfreeze_gc() -> None:
    global _GC_FREEZES
    gc.unfreeze()
    _GC_FREEZES = 0


def reset_module_state() -> None:
    """Undo what the bugs leave behind: caches, registries, singletons, threads and
    gc.freeze(). Tests call it in teardown; a correct shutdown leaves none of it."""
    for thread in threading.enumerate():
        if isinstance(thread, Detokenizer):
            thread.stop()
    supports_kw.cache_clear()
    _ROPE_CACHE.clear()
    Workspace.release()
    while _LIVE_BLOCK_MANAGERS:
        _LIVE_BLOCK_MANAGERS[-1].free()
    if _GC_FREEZES:
        _unfreeze_gc()
    gc.collect()
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()


# -- command line ----------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; a CUDA device gets its index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _workspace_nbytes() -> int:
    # A helper, so that main() keeps no reference to the workspace across shutdown.
    instance = Workspace._instance
    return instance.nbytes if instance is not None else 0


def _fmt(nbytes: int) -> str:
    return f"{nbytes / MiB:.1f} MiB"


def _prompt(length: int, vocab_size: int) -> list[int]:
    return [(7 * i + 3) % vocab_size for i in range(length)]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="toy_engine.py",
        description="Toy inference engine with switchable GPU-memory-leak bugs.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument(
        "--bug",
        dest="bugs",
        action="extend",
        nargs="+",
        default=[],
        choices=[*BUGS, "all"],
        metavar="NAME",
        help="turn a bug on (repeatable; 'all' for every bug); see --list-bugs",
    )
    parser.add_argument(
        "--fixed",
        action="store_true",
        help="keep the features the bugs need, shut down correctly",
    )
    parser.add_argument("--list-bugs", action="store_true", help="list the bugs and exit")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False; use --device cpu")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.list_bugs:
        for bug in BUGS.values():
            print(f"{bug.name}: {bug.leak}. Fix: {bug.fix}.")
        return 0
    named = frozenset(BUGS) if "all" in args.bugs else frozenset(args.bugs)
    config = EngineConfig(
        device=resolve_device(args.device),
        freeze_gc="gc_freeze" in named,
        bugs=frozenset() if args.fixed else named,
    )
    bug_list = ", ".join(sorted(config.bugs)) or "none"

    phase("create")
    engine = ToyEngine.create(config)
    weights = engine.weight_bytes()
    print(
        f"create: {config.num_layers} layers on {config.device}, "
        f"weights {_fmt(weights)}, "
        f"kv cache {_fmt(live_kv_cache_bytes())}, "
        f"workspace {_fmt(config.workspace_bytes)}; bugs: {bug_list}"
        + (" (fixed)" if args.fixed and named else "")
    )

    phase("infer")
    short = engine.generate(_prompt(16, config.vocab_size), max_new_tokens=8)
    long = engine.generate(_prompt(192, config.vocab_size), max_new_tokens=8)
    print(
        f"infer: 2 requests (16 and 192 prompt tokens), "
        f"{len(short) + len(long)} tokens generated, "
        f"workspace now {_fmt(_workspace_nbytes())}"
    )

    phase("shutdown")
    engine.shutdown()
    del engine
    print(f"shutdown: done; steps skipped by bugs: {bug_list}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

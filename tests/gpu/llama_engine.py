"""A real engine that is not ours, under `memdiag run`: a transformers Llama from a
small config with random weights, generate() with a static cache, then
torch.compile(mode="reduce-overhead") (CUDA graphs); created, run, shut down.

    python3 -m memdiag run --device cuda tests/gpu/llama_engine.py [--keep graph|compiled]

--keep graph: a CUDA graph captured around the model is kept in ``GRAPHS``;
--keep compiled: the compiled model is kept in ``ENGINES``; neither: clean shutdown.
"""

from __future__ import annotations

import argparse
import gc

import torch
from transformers import LlamaConfig, LlamaForCausalLM

GRAPHS: dict[str, torch.cuda.CUDAGraph] = {}
ENGINES: dict[str, object] = {}


def build() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", choices=["graph", "compiled"], default=None)
    keep = parser.parse_args().keep
    model = build()
    ids = torch.randint(0, 32000, (2, 16), device="cuda")
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, cache_implementation="static")
        assert out.shape == (2, 32)
        compiled = torch.compile(model, mode="reduce-overhead", fullgraph=False)
        static_in = torch.randint(0, 32000, (2, 64), device="cuda")
        for _ in range(3):
            logits = compiled(static_in).logits
        torch.cuda.synchronize()
        if keep == "graph":
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = model(static_in).logits
            graph.replay()
            del captured
            GRAPHS["decode"] = graph
        if keep == "compiled":
            ENGINES["llama"] = compiled
    # shutdown
    del model, compiled, logits, out, ids, static_in
    if keep != "compiled":
        torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


main()

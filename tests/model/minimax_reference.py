"""Reference pieces the model tests compare against: a small hybrid config, transformers' model, naive math."""

from __future__ import annotations

import torch
import transformers

# Lightning, lightning, softmax, lightning, softmax: state must cross a softmax layer and back.
LAYER_TYPES = ["linear_attention", "linear_attention", "full_attention", "linear_attention", "full_attention"]


def hf_config(**overrides) -> transformers.MiniMaxConfig:
    """A small hybrid MiniMax: GQA 4/2, head_dim 32, 4 experts top-2, 16-token lightning blocks."""
    kw = dict(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=96,
        num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        layer_types=LAYER_TYPES,
        block_size=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        initializer_range=0.08,  # larger than 0.02 so logits, routing and decays all matter
        full_attn_alpha_factor=0.8,
        full_attn_beta_factor=1.2,
        linear_attn_alpha_factor=0.9,
        linear_attn_beta_factor=1.1,
        mlp_alpha_factor=0.7,
        mlp_beta_factor=1.3,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    kw.update(overrides)
    return transformers.MiniMaxConfig(**kw)


def hf_model(config: transformers.MiniMaxConfig, seed: int = 0) -> transformers.MiniMaxForCausalLM:
    torch.manual_seed(seed)
    return transformers.MiniMaxForCausalLM(config).eval()


def partial_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """Rotate only the leading cos.shape[-1] channels, as MiniMax-Text-01 (and vLLM) do."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    rot = cos.shape[-1]

    def apply(x):
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        rotated = torch.cat((-x_rot[..., rot // 2 :], x_rot[..., : rot // 2]), dim=-1)
        return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)

    return apply(q), apply(k)


def naive_lightning(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """O(n^2) reference: o_i = sum_{j<=i} exp(-s (i-j)) (q_i . k_j) v_j; q, k, v (T, H, d), slope (H,)."""
    idx = torch.arange(q.shape[0], dtype=q.dtype)
    diff = idx[:, None] - idx[None, :]  # (T, T)
    decay = torch.where(diff >= 0, torch.exp(-slope.to(q.dtype)[:, None, None] * diff.clamp(min=0)), 0.0)  # (H, T, T)
    scores = torch.einsum("ihd,jhd->hij", q, k) * decay
    return torch.einsum("hij,jhd->ihd", scores, v)


def patch_partial_rope(model: transformers.MiniMaxForCausalLM) -> None:
    """Give a built reference model the partial-RoPE frequencies (see the conftest fixture)."""
    cfg = model.config
    dim = int(cfg.head_dim * cfg.rope_parameters["partial_rotary_factor"])
    theta = cfg.rope_parameters["rope_theta"]
    model.model.rotary_emb.inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))

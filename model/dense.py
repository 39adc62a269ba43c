"""Dense decoder-only checkpoints (Qwen2, Llama) for the built-in sampler.

The learner trains these models as transformers' own modules; this is the sampler's side
only: the same weights, under the same names, with a decoding cache in slots
(`cache.DecodeCache`) so `Sampler` decodes them with continuous batching and prefill-once,
as it does the hybrid model. vLLM's CPU engine spends ~11 ms of Python per decoding step
on a tiny model whose matmuls take ~1 ms; here a step is the model's own ops.

Layer (pre-norm, as in transformers):
    x = x + attn(norm1(x));  x = x + down(silu(gate(norm2(x))) * up(norm2(x)))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cispo.model.attention import RMSNorm, SoftmaxAttention, rope_cos_sin
from cispo.model.cache import ForwardContext, SlotDecoding
from cispo.model.checkpoint import read_tensors

DENSE_MODEL_TYPES = ("qwen2", "llama")


class UnsupportedCheckpoint(ValueError):
    """A checkpoint the dense sampler cannot run; the message names the config key."""


@dataclass
class DenseConfig:
    """What decoding needs of an HF config.json (Qwen2 / Llama)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2: always; Llama: `attention_bias` (which also puts one on o_proj)
    o_bias: bool
    mlp_bias: bool
    num_local_experts: int = 0  # no routing to record

    @property
    def layer_types(self) -> list[str]:
        """Every layer keeps K/V in the decoding cache."""
        return ["full_attention"] * self.num_hidden_layers

    @property
    def lightning_chunk_size(self) -> int:
        """No lightning layers: the packed layout's blocks go unused, so one block holds any prompt."""
        return self.max_position_embeddings

    @property
    def rotary_dim(self) -> int:
        return self.head_dim

    @classmethod
    def from_hf(cls, hf: dict) -> "DenseConfig":
        """Refuse, naming the key, what this decoder would run differently from transformers."""
        model_type = hf.get("model_type")
        if model_type not in DENSE_MODEL_TYPES:
            raise UnsupportedCheckpoint(f"model_type {model_type!r}: the built-in sampler runs {DENSE_MODEL_TYPES} "
                                        "dense checkpoints and our hybrid model; use rollout=vllm")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise UnsupportedCheckpoint(f"rope type {rope.get('rope_type', rope.get('type'))!r}: the built-in "
                                        "sampler applies default RoPE only; use rollout=vllm")
        if hf.get("use_sliding_window") or (model_type != "qwen2" and hf.get("sliding_window")):
            raise UnsupportedCheckpoint("sliding_window: the built-in sampler attends to the whole context; "
                                        "use rollout=vllm")
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedCheckpoint(f"hidden_act {hf['hidden_act']!r}: the built-in sampler's MLP is SwiGLU "
                                        "(silu); use rollout=vllm")
        heads = hf["num_attention_heads"]
        attention_bias = model_type == "llama" and bool(hf.get("attention_bias"))
        return cls(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            max_position_embeddings=hf["max_position_embeddings"], rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            qkv_bias=model_type == "qwen2" or attention_bias, o_bias=attention_bias,
            mlp_bias=model_type == "llama" and bool(hf.get("mlp_bias")))


class DenseMLP(nn.Module):
    def __init__(self, config: DenseConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DenseLayer(nn.Module):
    def __init__(self, config: DenseConfig, layer_idx: int):
        super().__init__()
        self.self_attn = SoftmaxAttention(config, layer_idx, qkv_bias=config.qkv_bias, o_bias=config.o_bias)
        self.mlp = DenseMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class DenseBackbone(nn.Module):
    """`model.*` of the checkpoint."""

    def __init__(self, config: DenseConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DenseLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, tokens: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.embed_tokens(tokens)  # (T, hidden)
        rope = rope_cos_sin(ctx.positions, self.config, x.dtype)
        for layer in self.layers:
            x = layer(x, ctx, rope)
        return self.norm(x)


class DenseLM(SlotDecoding, nn.Module):
    """A dense checkpoint for the sampler (`SlotDecoding`'s calls, as `LightningMoELM` has them)."""

    def __init__(self, config: DenseConfig):
        super().__init__()
        self.config = config
        self.model = DenseBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DenseLM":
        path = Path(path)
        model = cls(DenseConfig.from_hf(json.loads((path / "config.json").read_text())))
        model.load_state_dict(model.state_from_hf(read_tensors(path)))
        return model.float()

    def state_from_hf(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoint (or learner) names are ours already; a tied head may come under either name, and
        checkpoints saved by older transformers carry RoPE's inv_freq, a function of the config."""
        tensors = {k: v for k, v in tensors.items() if not k.endswith(".rotary_emb.inv_freq")}
        if self.config.tie_word_embeddings and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
            return {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}
        return tensors

    def _decoder(self, tokens: torch.Tensor, ctx: ForwardContext) -> tuple[torch.Tensor, None]:
        return self.model(tokens, ctx), None  # nothing routed

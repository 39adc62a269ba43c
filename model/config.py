"""The one model config: the fields of transformers' `MiniMaxConfig` we use, plus our switches.

It reads and writes the `config.json` that `transformers.MiniMaxForCausalLM` saves, so
a checkpoint directory moves between the two implementations unchanged. Field names
are transformers' own (`layer_types`, `block_size`, `*_alpha_factor`, `rope_parameters`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYER_TYPES = ("linear_attention", "full_attention")
# transformers MiniMax options this model does not implement, with the only value it accepts.
UNSUPPORTED = {"hidden_act": "silu", "sliding_window": None, "router_jitter_noise": 0.0, "attention_dropout": 0.0}


@dataclass
class ModelConfig:
    # Vocabulary size (rows of the embedding and of the LM head).
    vocab_size: int = 512
    # Residual stream width.
    hidden_size: int = 256
    # Width of one expert's SwiGLU hidden layer.
    intermediate_size: int = 512
    # Number of decoder layers; `layer_types` says which are lightning and which softmax.
    num_hidden_layers: int = 8
    # Query heads (lightning layers use the same count for q, k and v).
    num_attention_heads: int = 8
    # Key/value heads of the softmax layers (GQA).
    num_key_value_heads: int = 2
    # Per-head width; None means hidden_size // num_attention_heads, as in transformers.
    head_dim: int | None = 32
    # Per layer "linear_attention" (lightning) or "full_attention" (softmax); None: 7 lightning then 1 softmax, repeated.
    layer_types: list[str] | None = None
    # transformers' lightning block length: only its compute schedule (and its checkpoints' decay buffers).
    block_size: int = 256
    # Our lightning kernel's block length. The result is exact for any value (blocks only split the
    # sum); intra-block work grows with it and the cross-block scan shrinks, 64 is the CPU optimum at head_dim 32.
    lightning_chunk_size: int = 64
    # Experts per MoE layer.
    num_local_experts: int = 8
    # Experts each token is routed to (top-k, weights renormalised over the k).
    num_experts_per_tok: int = 2
    # Weight of the load-balancing loss the learner adds to its own loss.
    router_aux_loss_coef: float = 0.001
    # Epsilon of the decoder RMSNorms (the lightning output norm uses 1e-6, as transformers does).
    rms_norm_eps: float = 1e-5
    # RoPE of the softmax layers: rope_theta and partial_rotary_factor (fraction of head_dim rotated).
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 1e6})
    # Longest sequence the model is used at (sizes the sampler's KV cache by default).
    max_position_embeddings: int = 131072
    # Residual mixing: out = residual * alpha + branch * beta, per branch type (MiniMax-Text-01 uses these).
    full_attn_alpha_factor: float = 1.0
    full_attn_beta_factor: float = 1.0
    linear_attn_alpha_factor: float = 1.0
    linear_attn_beta_factor: float = 1.0
    mlp_alpha_factor: float = 1.0
    mlp_beta_factor: float = 1.0
    # Share the embedding matrix with the LM head.
    tie_word_embeddings: bool = False
    # Std of the normal init of fresh weights.
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    # Compute the LM head (and so every logit) in FP32 even when the model runs in bf16 (MiniMax-M1).
    lm_head_fp32: bool = True

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = [
                "full_attention" if (i + 1) % 8 == 0 else "linear_attention" for i in range(self.num_hidden_layers)
            ]
        self.rope_parameters = {"rope_type": "default", "rope_theta": 1e6, **self.rope_parameters}
        self.validate()

    def validate(self) -> None:
        """Raise with the rule spelled out; a bad config must not reach a 30-minute job."""
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is {self.num_hidden_layers}"
            )
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            raise ValueError(f"layer_types: unknown {bad}; expected each of {LAYER_TYPES}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise ValueError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be in [1, num_local_experts="
                f"{self.num_local_experts}]"
            )
        if self.rope_parameters["rope_type"] != "default":
            raise ValueError(f"rope_parameters.rope_type {self.rope_parameters['rope_type']!r}: only 'default' is supported")
        if self.rotary_dim % 2:
            raise ValueError(f"rotary dim {self.rotary_dim} (head_dim * partial_rotary_factor) must be even")

    @property
    def rotary_dim(self) -> int:
        """Leading channels of each softmax head that RoPE rotates (MiniMax-Text-01 rotates half)."""
        return int(self.head_dim * self.rope_parameters.get("partial_rotary_factor", 1.0))

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])

    # --- transformers' config.json -------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        """Build from a transformers MiniMax config dict; keys we do not model are ignored.

        The legacy spellings transformers still accepts are mapped: `attn_type_list`
        (1 = softmax, 0 = lightning), `rope_theta`, `rotary_dim`, `partial_rotary_factor`.
        """
        if raw.get("model_type", "minimax") != "minimax":
            raise ValueError(f"config.json: model_type {raw.get('model_type')!r}, expected 'minimax'")
        for key, accepted in UNSUPPORTED.items():
            if raw.get(key, accepted) != accepted:
                raise ValueError(f"config.json: {key}={raw[key]!r} is not supported by cispo.model (only {accepted!r})")
        raw = dict(raw)
        if raw.get("layer_types") is None and "attn_type_list" in raw:
            raw["layer_types"] = [LAYER_TYPES[int(t)] for t in raw["attn_type_list"]]
        rope = dict(raw.get("rope_parameters") or {})
        if "rope_theta" in raw:
            rope.setdefault("rope_theta", raw["rope_theta"])
        if "partial_rotary_factor" in raw:
            rope.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
        if "rotary_dim" in raw and raw.get("head_dim"):
            rope.setdefault("partial_rotary_factor", raw["rotary_dim"] / raw["head_dim"])
        raw["rope_parameters"] = rope
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def to_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The config.json transformers' `MiniMaxConfig.from_pretrained` reads."""
        out = dataclasses.asdict(self)
        out.update(model_type="minimax", architectures=["MiniMaxForCausalLM"], dtype=dtype)
        return out

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_json(self, path: str | Path, dtype: str = "float32") -> None:
        Path(path).write_text(json.dumps(self.to_dict(dtype), indent=2, sort_keys=True) + "\n")

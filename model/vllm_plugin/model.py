"""`MiniMaxForCausalLM` for vLLM: our hybrid lightning-attention MoE built from vLLM's layers.

    lightning layers  -> `LightningAttentionLayer` (state in vLLM's v1 state cache)
    softmax layer     -> QKV / o_proj + vLLM `Attention` (paged KV cache), GQA, partial RoPE (neox)
    MoE FFN           -> router `GateLinear` + vLLM's fused MoE (softmax, top-k, renormalised)
    LM head           -> its own FP32 weight when lm_head_fp32, also when the embeddings are tied

The decoder layer keeps our residual rule (the residual is taken after the norm):
    h = norm1(x);  x = h * alpha_attn + mixer(h) * beta_attn
    h = norm2(x);  x = h * alpha_mlp  + moe(h)  * beta_mlp
Weights load from the checkpoint's names (per-expert `block_sparse_moe.experts.{e}.w1/w2/w3`)
and from the learner's in-memory names (stacked `mlp.experts.gate_up_proj` / `down_proj`),
so a checkpoint directory and a weight push both load (`weight_names.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.fused_moe import FusedMoEFactory, GateLinear
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.mamba_utils import MambaStateCopyFuncCalculator, MambaStateShapeCalculator
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.model_executor.models.utils import maybe_prefix
from vllm.sequence import IntermediateTensors

from cispo.model.config import ModelConfig
from cispo.model.vllm_plugin.lightning_layer import LightningAttentionLayer
from cispo.model.vllm_plugin.weight_names import to_vllm_names


def model_config_of(vllm_config: VllmConfig) -> ModelConfig:
    """Our typed config from the checkpoint's config.json (as transformers' MiniMaxConfig read it)."""
    return ModelConfig.from_dict(vllm_config.model_config.hf_config.to_dict())


class SoftmaxAttention(nn.Module):
    def __init__(self, config: ModelConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        d = config.head_dim
        self.q_size = config.num_attention_heads // tp * d
        self.kv_size = max(1, config.num_key_value_heads // tp) * d
        self.qkv_proj = QKVParallelLinear(config.hidden_size, d, config.num_attention_heads,
                                          config.num_key_value_heads, bias=False, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(config.num_attention_heads * d, config.hidden_size, bias=False,
                                        prefix=f"{prefix}.o_proj")
        # Rotates the leading head_dim * partial_rotary_factor channels, neox half-split, like ours.
        self.rotary_emb = get_rope(d, max_position=config.max_position_embeddings, is_neox_style=True,
                                   rope_parameters=dict(config.rope_parameters))
        self.attn = Attention(config.num_attention_heads // tp, d, d**-0.5, num_kv_heads=self.kv_size // d,
                              cache_config=vllm_config.cache_config, prefix=f"{prefix}.attn")

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(self.attn(q, k, v))
        return out


class SparseMoeBlock(nn.Module):
    """Softmax router, top-k experts renormalised, SwiGLU experts: vLLM's fused MoE."""

    def __init__(self, config: ModelConfig, prefix: str):
        super().__init__()
        self.gate = GateLinear(config.hidden_size, config.num_local_experts, prefix=f"{prefix}.gate")
        self.experts = FusedMoEFactory(
            num_experts=config.num_local_experts, top_k=config.num_experts_per_tok,
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            renormalize=True, scoring_func="softmax", prefix=f"{prefix}.experts")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        router_logits, _ = self.gate(x)
        return self.experts(x, router_logits)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, vllm_config: VllmConfig, layer_idx: int, prefix: str):
        super().__init__()
        self.lightning = config.layer_types[layer_idx] == "linear_attention"
        if self.lightning:
            self.self_attn = LightningAttentionLayer(vllm_config.model_config.hf_config, config, vllm_config,
                                                     prefix=f"{prefix}.self_attn")
            self.attn_alpha, self.attn_beta = config.linear_attn_alpha_factor, config.linear_attn_beta_factor
        else:
            self.self_attn = SoftmaxAttention(config, vllm_config, prefix=f"{prefix}.self_attn")
            self.attn_alpha, self.attn_beta = config.full_attn_alpha_factor, config.full_attn_beta_factor
        self.mlp_alpha, self.mlp_beta = config.mlp_alpha_factor, config.mlp_beta_factor
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SparseMoeBlock(config, prefix=f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.input_layernorm(x)
        if self.lightning:
            mixed = torch.empty_like(h)
            self.self_attn(h, mixed, positions)
        else:
            mixed = self.self_attn(h, positions)
        x = h * self.attn_alpha + mixed * self.attn_beta
        h = self.post_attention_layernorm(x)
        return h * self.mlp_alpha + self.mlp(h) * self.mlp_beta


class Backbone(nn.Module):
    """`model.*` of the checkpoint."""

    def __init__(self, config: ModelConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, vllm_config, i, prefix=f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)  # (T, hidden)
        for layer in self.layers:
            x = layer(x, positions)
        return self.norm(x)


class LightningMoEForCausalLM(nn.Module, HasInnerState, IsHybrid):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        self.config = config = model_config_of(vllm_config)
        self.model = Backbone(config, vllm_config, prefix=maybe_prefix(prefix, "model"))
        # Never tied to the embedding in vLLM: an FP32 head must not share a bf16 embedding, and a tied
        # checkpoint loads the embedding into both (weight_names.py).
        head_dtype = torch.float32 if config.lm_head_fp32 else None
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, params_dtype=head_dtype,
                                      prefix=maybe_prefix(prefix, "lm_head"))
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states.to(self.lm_head.weight.dtype))

    # --- the state cache vLLM allocates for the lightning layers ------------------------------

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, int, int]]:
        config = model_config_of(vllm_config)
        return MambaStateShapeCalculator.linear_attention_state_shape(
            num_heads=config.num_attention_heads, tp_size=vllm_config.parallel_config.tensor_parallel_size,
            head_dim=config.head_dim)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype]:
        return (torch.float32,)  # as LightningAttentionLayer.get_state_dtype

    @classmethod
    def get_mamba_state_copy_func(cls) -> tuple:
        return MambaStateCopyFuncCalculator.linear_attention_state_copy_func()

    # --- weights --------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint or pushed (name, tensor) pairs -> parameters; returns the names loaded."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for target in to_vllm_names(weights, self.config):
            if target.expert_weight is not None:  # the fused-MoE module loads (and splits) its own
                experts = self.get_submodule(target.param)
                loaded.update(f"{target.param}.{p}" for p in experts.load_weights([(target.expert_weight, target.tensor)]))
                continue
            param = params[target.param]
            loader = getattr(param, "weight_loader", default_weight_loader)
            if target.shard is None:
                loader(param, target.tensor)
            else:
                loader(param, target.tensor, target.shard)
            loaded.add(target.param)
        return loaded

"""The hybrid lightning-attention MoE language model (MiniMax-Text-01 / M1 layout).

Parameter names are those of `transformers.MiniMaxForCausalLM` in memory
(`model.layers.3.mlp.experts.gate_up_proj`, ...), so loading is a key copy once the
on-disk per-expert tensors are stacked (`checkpoint.py`). Inside, the layers work on
the flat (T, hidden) token stream: a (batch, seq) input is just `batch` documents of
equal length, and a packed input gives its documents with `cu_seqlens`.

Decoder layer (transformers' order, note the residual is taken *after* the norm):
    h = norm1(x);  x = h * alpha_attn + mixer(h) * beta_attn
    h = norm2(x);  x = h * alpha_mlp  + moe(h)  * beta_mlp
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cispo.model.attention import LightningAttention, RMSNorm, SoftmaxAttention, rope_cos_sin
from cispo.model.cache import ForwardContext, SlotDecoding
from cispo.model.config import ModelConfig
from cispo.model.moe import (Experts, RouterStats, SamplerRouting, SparseMoeBlock, TopKRouter, load_balancing_loss,
                             routing_metrics)
from cispo.model.packing import PackedLayout


class LMOutput(NamedTuple):
    """A NamedTuple so ZeRO-3's hooks see the tensors in it (they skip dataclasses)."""

    logits: torch.Tensor  # (batch, seq, vocab), FP32 when config.lm_head_fp32
    aux_loss: torch.Tensor  # load-balancing loss; the learner adds router_aux_loss_coef * aux_loss
    tokens_per_expert: torch.Tensor  # (layers, experts) top-k assignments this step, as used
    # (layers,) tokens with a sampler record whose own top-k set equals the sampler's; zeros without `routing`
    agreeing_tokens: torch.Tensor

    def router_metrics(self) -> dict[str, float]:
        return routing_metrics(self.tokens_per_expert)


def _mix(residual: torch.Tensor, alpha: float, branch: torch.Tensor, beta: float) -> torch.Tensor:
    """residual * alpha + branch * beta, skipping the multiplies by 1.0 (the usual factors; same bits)."""
    residual = residual if alpha == 1 else residual * alpha
    branch = branch if beta == 1 else branch * beta
    return residual + branch


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.lightning = config.layer_types[layer_idx] == "linear_attention"
        if self.lightning:
            self.self_attn = LightningAttention(config, layer_idx)
            self.attn_alpha, self.attn_beta = config.linear_attn_alpha_factor, config.linear_attn_beta_factor
        else:
            self.self_attn = SoftmaxAttention(config, layer_idx)
            self.attn_alpha, self.attn_beta = config.full_attn_alpha_factor, config.full_attn_beta_factor
        self.mlp_alpha, self.mlp_beta = config.mlp_alpha_factor, config.mlp_beta_factor
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SparseMoeBlock(config)

    def forward(
        self, x: torch.Tensor, ctx: ForwardContext, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, RouterStats]:
        h = self.input_layernorm(x)
        mixed = self.self_attn(h, ctx) if self.lightning else self.self_attn(h, ctx, rope)
        x = _mix(h, self.attn_alpha, mixed, self.attn_beta)
        h = self.post_attention_layernorm(x)
        moe, stats = self.mlp(h, None if ctx.routing is None else ctx.routing.layer(self.layer_idx))
        return _mix(h, self.mlp_alpha, moe, self.mlp_beta), stats


class Backbone(nn.Module):
    """`model.*` of the checkpoint: embeddings, decoder layers, final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, tokens: torch.Tensor, ctx: ForwardContext) -> tuple[torch.Tensor, list[RouterStats]]:
        """tokens (T,) -> final hidden states (T, hidden) and each layer's router statistics."""
        x = self.embed_tokens(tokens)  # (T, hidden)
        rope = rope_cos_sin(ctx.positions, self.config, x.dtype)
        stats = []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x, s = checkpoint(layer, x, ctx, rope, use_reentrant=False)
            else:
                x, s = layer(x, ctx, rope)
            stats.append(s)
        return self.norm(x), stats


class LMHead(nn.Linear):
    """The LM head, optionally in FP32 whatever the model dtype (MiniMax-M1: train/sample probs agree better).

    A module of its own so ZeRO-3 gathers its weight when it runs.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config.hidden_size, config.vocab_size, bias=False)
        self.fp32 = config.lm_head_fp32

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            return F.linear(h.float(), self.weight.float())
        return F.linear(h, self.weight)


class LightningMoELM(SlotDecoding, nn.Module):
    """The policy. `model(input_ids)` or `model(flat_ids, cu_seqlens=...)` -> `LMOutput`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = LMHead(config)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Fresh weights as transformers draws them: N(0, initializer_range), norms at one."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, Experts):
            nn.init.normal_(module.gate_up_proj, std=std)
            nn.init.normal_(module.down_proj, std=std)
        elif isinstance(module, TopKRouter):
            nn.init.normal_(module.weight, std=std)

    def save_pretrained(self, path) -> None:
        """Write a checkpoint directory that `transformers.MiniMaxForCausalLM.from_pretrained` loads."""
        from cispo.model.checkpoint import save_pretrained  # checkpoint.py imports this module, so import late

        save_pretrained(self, path)

    def state_from_hf(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoint names (per-expert or stacked) -> this module's state_dict names."""
        from cispo.model.checkpoint import hf_to_ours  # checkpoint.py imports this module, so import late

        return hf_to_ours(tensors, self.config)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each decoder layer in backward instead of keeping its activations."""
        self.model.gradient_checkpointing = True

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                routing: SamplerRouting | None = None) -> LMOutput:
        """input_ids (batch, seq), or (1, total) / (total,) packed documents with int32 cu_seqlens (D+1,).

        Packed documents are independent: lightning state resets and softmax attention stops
        at each boundary, and positions restart at 0 in every document.
        `routing`: the experts a sampler routed each token to, (total, layers, k) in the flat token
        order; replayed when `routing.replay`, else only compared (`LMOutput.agreeing_tokens`).
        """
        shape = input_ids.shape
        if cu_seqlens is None:
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must be (batch, seq) without cu_seqlens; got shape {tuple(shape)}")
            layout = PackedLayout.uniform(shape[0], shape[1], self.config.lightning_chunk_size, input_ids.device)
        else:
            if input_ids.numel() != int(cu_seqlens[-1]) or (input_ids.ndim == 2 and shape[0] != 1):
                raise ValueError(
                    f"packed input_ids {tuple(shape)} must be (1, total) or (total,) with total = cu_seqlens[-1] "
                    f"= {int(cu_seqlens[-1])}"
                )
            layout = PackedLayout.from_cu_seqlens(cu_seqlens.to(input_ids.device), self.config.lightning_chunk_size)
        if routing is not None and routing.experts.shape[:2] != (input_ids.numel(), self.config.num_hidden_layers):
            raise ValueError(f"routing experts {tuple(routing.experts.shape)} must be (tokens={input_ids.numel()}, "
                             f"layers={self.config.num_hidden_layers}, k)")
        ctx = ForwardContext(positions=layout.positions, layout=layout, routing=routing)
        hidden, stats = self.model(input_ids.reshape(-1), ctx)
        logits = self.lm_head(hidden).view(*shape, -1)  # (batch, seq, vocab)
        return LMOutput(
            logits=logits,
            aux_loss=load_balancing_loss(stats, self.config.num_experts_per_tok),
            tokens_per_expert=torch.stack([s.tokens_per_expert for s in stats]),
            agreeing_tokens=torch.stack([s.agreeing_tokens for s in stats]),
        )

    # --- decoding (the sampler's calls: `SlotDecoding`) ----------------------------------

    def _decoder(self, tokens: torch.Tensor, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, stats = self.model(tokens, ctx)
        return hidden, torch.stack([s.experts for s in stats], dim=1)  # (T, layers, k)

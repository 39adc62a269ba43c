"""Mixture-of-experts FFN: softmax router, top-k renormalised weights, SwiGLU experts in grouped form.

Tokens are sorted by expert once, so each expert's tokens are one contiguous block
and each projection is one GEMM per expert: no per-token work in Python. The router's per-layer counts and
probability sums come back with the output so the model can form the load-balancing
loss and the routing statistics the trainer logs.

Routing replay (R3, "Stabilizing MoE RL by Aligning Training and Inference Routers"): given the
experts a sampler routed each token to (`SamplerRouting`), the block sends recorded tokens to
those experts instead of its own top-k. The gate weights still come from this router's logits,
renormalised over the replayed experts (softmax restricted to them), so the router keeps its
gradient. Tokens without a record fall back to the router's own top-k.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cispo.model.config import ModelConfig


class RouterStats(NamedTuple):
    """One layer's routing this step (a NamedTuple so ZeRO-3's hooks see its tensors)."""

    tokens_per_expert: torch.Tensor  # (E,) top-k assignments per expert, as used (no grad)
    prob_sum: torch.Tensor  # (E,) router probability mass per expert, summed over tokens (carries grad)
    num_tokens: int
    experts: torch.Tensor  # (T, k) the experts each token was sent to
    # () recorded tokens whose own top-k set equals the sampler's (a drift monitor); 0 without a record
    agreeing_tokens: torch.Tensor


class SamplerRouting(NamedTuple):
    """The experts a sampler routed each token of a forward to (a NamedTuple so ZeRO-3's hooks see its tensors)."""

    experts: torch.Tensor  # (T, layers, k) expert ids (any integer dtype), or (T, k) inside one block
    recorded: torch.Tensor  # (T,) bool: tokens the sampler routed; the rest have no ids
    replay: bool  # compute with these experts (routing replay), or only compare the router's own with them

    def layer(self, i: int) -> "SamplerRouting":
        return self._replace(experts=self.experts[:, i])


def renormalised(top_p: torch.Tensor) -> torch.Tensor:
    """(T, k) router probabilities of the chosen experts -> gate weights summing to 1 per token."""
    return top_p / top_p.sum(dim=-1, keepdim=True)


class TopKRouter(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.weight = nn.Parameter(torch.empty(config.num_local_experts, config.hidden_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, D) -> probs (T, E) FP32, top-k weights (T, k) renormalised, top-k expert ids (T, k)."""
        probs = F.linear(x, self.weight).float().softmax(dim=-1)  # (T, E)
        top_w, top_i = probs.topk(self.top_k, dim=-1)  # (T, k)
        return probs, renormalised(top_w), top_i


class Experts(nn.Module):
    """E SwiGLU experts stored as stacked tensors (transformers' layout: gate rows, then up rows)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, D, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.num_experts = E
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, I))

    def forward(self, x: torch.Tensor, top_w: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
        """x (T, D), top_w / top_i (T, k) -> (T, D): sum over the k chosen experts of weight * expert(x).

        The (token, expert) pairs are sorted by expert, so each expert's rows are one
        contiguous slice and each projection is one GEMM per expert. (torch's grouped_mm
        would fuse the E GEMMs, but on CPU it wants the weights transposed, runs at half
        the GEMM rate measured here, and its backward rejects expanded gradients.)
        """
        T, k = top_i.shape
        flat_expert = top_i.reshape(-1)  # (T*k,)
        order = torch.argsort(flat_expert, stable=True)  # (S,) assignment rows grouped by expert
        token = order // k  # (S,) token of each sorted row
        counts = torch.bincount(flat_expert, minlength=self.num_experts).tolist()
        weight = top_w.reshape(-1)[order, None].to(x.dtype)  # (S, 1)

        rows = x[token]  # (S, D)
        outputs = []
        for e, (xs, ws) in enumerate(zip(rows.split(counts), weight.split(counts))):
            if xs.shape[0] == 0:
                continue
            gate, up = F.linear(xs, self.gate_up_proj[e]).chunk(2, dim=-1)  # (n_e, I) each
            outputs.append(F.linear(F.silu(gate) * up, self.down_proj[e]) * ws)  # (n_e, D)
        return torch.zeros_like(x).index_add_(0, token, torch.cat(outputs))


class SparseMoeBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = TopKRouter(config)
        self.experts = Experts(config)

    def forward(self, x: torch.Tensor, sampler: SamplerRouting | None = None) -> tuple[torch.Tensor, RouterStats]:
        """x (T, D) -> (T, D). `sampler` (experts (T, k)): compare with, or replay, the sampler's routing."""
        probs, top_w, top_i = self.gate(x)
        agreeing = torch.zeros((), dtype=torch.long, device=x.device)
        if sampler is not None:
            theirs = sampler.experts.to(top_i.device, torch.long)  # (T, k)
            recorded = sampler.recorded.to(top_i.device)  # (T,)
            same = (top_i.sort(dim=-1).values == theirs.sort(dim=-1).values).all(dim=-1)  # (T,) as sets
            agreeing = (same & recorded).sum()
            if sampler.replay:
                top_i = torch.where(recorded[:, None], theirs, top_i)
                top_w = renormalised(probs.gather(-1, top_i))
        stats = RouterStats(
            tokens_per_expert=torch.bincount(top_i.reshape(-1), minlength=probs.shape[-1]).detach(),
            prob_sum=probs.sum(dim=0),
            num_tokens=x.shape[0],
            experts=top_i.detach(),
            agreeing_tokens=agreeing,
        )
        return self.experts(x, top_w, top_i), stats


def load_balancing_loss(stats: list[RouterStats], top_k: int) -> torch.Tensor:
    """Switch-Transformer balance loss over all layers, exactly as transformers' MiniMax forms it.

    With f_e = (top-k assignments to e, summed over layers) / (layers * tokens) and
    P_e = (router probability of e, summed over layers) / (layers * tokens):
    loss = E * sum_e f_e P_e. Counts and probabilities are pooled over layers before
    the product (not a mean of per-layer losses). Minimum k (perfect balance).
    """
    rows = sum(s.num_tokens for s in stats)
    f = torch.stack([s.tokens_per_expert for s in stats]).sum(0).float() / rows  # (E,)
    p = torch.stack([s.prob_sum for s in stats]).sum(0) / rows  # (E,)
    return (f * p).sum() * f.numel()


def routing_metrics(tokens_per_expert: torch.Tensor) -> dict[str, float]:
    """Loggable routing figures from (layers, E) counts: how unbalanced is the busiest expert.

    imbalance = max / mean tokens per expert (1.0 is perfect), worst and mean over layers;
    dead = experts with no token in a layer, summed over layers.
    """
    load = tokens_per_expert.float()
    imbalance = load.max(dim=-1).values / load.mean(dim=-1).clamp(min=1e-9)  # (layers,)
    return {
        "imbalance_max": imbalance.max().item(),
        "imbalance_mean": imbalance.mean().item(),
        "dead_experts": int((load == 0).sum().item()),
    }

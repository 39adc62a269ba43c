"""MoE routing on the learner: the sampler's recorded experts as a forward's input, and the
step's routing metrics from sums every rank returns (so ranks merge exactly).

    moe/routing_agreement           fraction of (recorded token, layer) pairs where the learner's own
                                    top-k set equals the sampler's: a drift monitor, with or without
                                    replay (logged only when some sample carries a record)
    moe/layer{i}/load_max_over_mean tokens of layer i's busiest expert over the mean per expert
                                    (1.0 is perfect balance), counting the experts the forward used

Both are over every forward of the step's updates (all mini-batches and epochs).
"""

from __future__ import annotations

import torch

from cispo.learner.batch import TrainBatch
from cispo.model.moe import SamplerRouting


def sampler_routing(batch: TrainBatch, real: torch.Tensor) -> SamplerRouting | None:
    """The batch's recorded experts in packed order (the tokens where `real` (B, L) is set), or None."""
    if batch.routed_experts is None:
        return None
    return SamplerRouting(batch.routed_experts[real], batch.routing_recorded[real], batch.replay_routing)


def routing_sums(tokens_per_expert: torch.Tensor, agreeing_tokens: torch.Tensor,
                 routing: SamplerRouting | None) -> dict[str, list]:
    """One forward's sums: `moe_load_sums` (layers, E) tokens per expert; `moe_agreement_sums`
    [agreeing, recorded] (token, layer) pairs."""
    layers = tokens_per_expert.shape[0]
    recorded = 0 if routing is None else int(routing.recorded.sum()) * layers
    return {"moe_load_sums": tokens_per_expert.tolist(),
            "moe_agreement_sums": [int(agreeing_tokens.sum()), recorded]}


def add_routing_sums(into: dict, sums: dict[str, list]) -> None:
    load, agreement = into.get("moe_load_sums"), into.get("moe_agreement_sums", [0, 0])
    into["moe_load_sums"] = sums["moe_load_sums"] if load is None else \
        [[a + b for a, b in zip(x, y)] for x, y in zip(load, sums["moe_load_sums"])]
    into["moe_agreement_sums"] = [a + b for a, b in zip(agreement, sums["moe_agreement_sums"])]


def routing_metrics(load_sums: list[list[float]], agreement_sums: list[float]) -> dict[str, float]:
    """The step's moe/ metrics from the ranks' merged sums."""
    load = torch.tensor(load_sums, dtype=torch.float64)  # (layers, E)
    ratio = load.max(dim=-1).values / load.mean(dim=-1).clamp(min=1e-9)  # (layers,)
    out = {f"moe/layer{i}/load_max_over_mean": float(r) for i, r in enumerate(ratio)}
    agreeing, recorded = agreement_sums
    if recorded:
        out["moe/routing_agreement"] = agreeing / recorded
    return out

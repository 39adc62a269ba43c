"""Routing, expert mixing and the load-balancing loss against hand computations and transformers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from minimax_reference import hf_config, hf_model

import cispo.model as cm
from cispo.model.moe import RouterStats, SparseMoeBlock, load_balancing_loss, routing_metrics


def _block(seed: int = 0) -> SparseMoeBlock:
    torch.manual_seed(seed)
    block = SparseMoeBlock(cm.ModelConfig.from_dict(hf_config().to_dict()))
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return block


def test_moe_output_equals_per_token_hand_computation():
    block = _block()
    x = torch.randn(37, 128)
    out, stats = block(x)
    E = block.experts.num_experts
    expected = torch.zeros_like(x)
    counts = torch.zeros(E, dtype=torch.int64)
    for t in range(x.shape[0]):  # the slow, obvious way: one token at a time
        probs = F.softmax(block.gate.weight @ x[t], dim=-1)
        top_p, top_e = probs.topk(2)
        for p, e in zip(top_p / top_p.sum(), top_e):
            gate, up = (block.experts.gate_up_proj[e] @ x[t]).chunk(2)
            expected[t] += p * (block.experts.down_proj[e] @ (F.silu(gate) * up))
            counts[e] += 1
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(stats.tokens_per_expert, counts) and stats.num_tokens == 37


def test_moe_block_equals_transformers_block():
    block = _block(1)
    ref = transformers.models.minimax.modeling_minimax.MiniMaxSparseMoeBlock(hf_config()).eval()
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 40, 128)
    with torch.no_grad():
        torch.testing.assert_close(block(x.view(-1, 128))[0], ref(x).view(-1, 128), atol=1e-5, rtol=1e-5)


def test_gradients_flow_to_experts_and_router():
    block = _block(2)
    out, stats = block(torch.randn(64, 128))
    (out.square().sum() + load_balancing_loss([stats], 2)).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_aux_loss_equals_hand_formula_and_transformers():
    """E * sum_e f_e P_e with counts and probabilities pooled over layers (transformers' definition)."""
    hf = hf_model(hf_config())
    ours = cm.LightningMoELM(cm.ModelConfig.from_dict(hf.config.to_dict()))
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k in ours.state_dict()})
    x = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        expected = hf(x, output_router_logits=True)
    out = ours(x)
    torch.testing.assert_close(out.aux_loss, expected.aux_loss, atol=1e-6, rtol=1e-5)

    probs = torch.cat([F.softmax(r.float(), -1) for r in expected.router_logits])  # (layers * tokens, E)
    chosen = probs.topk(2, dim=-1).indices
    f = torch.stack([(chosen == e).sum() for e in range(4)]).float() / probs.shape[0]
    by_hand = 4 * (f * probs.mean(0)).sum()
    torch.testing.assert_close(out.aux_loss.detach(), by_hand, atol=1e-6, rtol=1e-5)
    per_layer = torch.stack([torch.bincount(r.float().topk(2, -1).indices.view(-1), minlength=4) for r in expected.router_logits])
    assert torch.equal(out.tokens_per_expert, per_layer)


def test_balanced_routing_gives_the_minimum_loss_and_unit_imbalance():
    """Uniform probabilities with perfectly even top-k counts: loss = k, imbalance = 1."""
    stats = [RouterStats(torch.tensor([10, 10, 10, 10]), torch.full((4,), 20 / 4.0), 20,
                         experts=torch.zeros(20, 2, dtype=torch.long), agreeing_tokens=torch.tensor(0))]
    torch.testing.assert_close(load_balancing_loss(stats, 2), torch.tensor(2.0))
    metrics = routing_metrics(torch.tensor([[10, 10, 10, 10], [40, 0, 0, 0]]))
    assert metrics == {"imbalance_max": 4.0, "imbalance_mean": 2.5, "dead_experts": 3}

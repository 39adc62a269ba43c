"""Routing replay (R3) in the model: the experts a forward uses under replay, the router's gradient
there, the agreement count, and the routing the built-in sampler records."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from minimax_reference import hf_config

import cispo.model as cm
from cispo.model.moe import SamplerRouting, SparseMoeBlock
from cispo.types import RoutedExperts, SamplingParams


def _model(seed: int = 0) -> cm.LightningMoELM:
    torch.manual_seed(seed)
    return cm.LightningMoELM(cm.ModelConfig.from_dict({**hf_config().to_dict(), "lightning_chunk_size": 16})).eval()


def _watch_routing(model: cm.LightningMoELM) -> tuple[dict, dict]:
    """Per layer, filled by each forward: the router's own top-k (T, k) and the experts the expert
    mixing was handed (T, k)."""
    own, used = {}, {}
    for i, layer in enumerate(model.model.layers):
        layer.mlp.gate.register_forward_hook(lambda m, args, out, i=i: own.__setitem__(i, out[2]))
        layer.mlp.experts.register_forward_hook(lambda m, args, out, i=i: used.__setitem__(i, args[2]))
    return own, used


def _as_sets(experts: torch.Tensor) -> torch.Tensor:
    return experts.long().sort(dim=-1).values


def _ids(routed: RoutedExperts) -> torch.Tensor:
    return torch.frombuffer(bytearray(routed.ids), dtype=torch.uint8).view(routed.tokens, routed.layers, routed.top_k)


def test_replay_uses_the_recorded_experts_exactly_and_the_own_top_k_elsewhere():
    model = _model()
    L, E, k = model.config.num_hidden_layers, model.config.num_local_experts, model.config.num_experts_per_tok
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (40,), generator=g)
    cu = torch.tensor([0, 25, 40], dtype=torch.int32)
    record = torch.rand(40, L, E, generator=g).argsort(dim=-1)[..., :k].to(torch.uint8)  # k distinct experts
    recorded = torch.ones(40, dtype=torch.bool)
    recorded[[3, 24, 30, 31, 39]] = False  # e.g. an environment's observation tokens
    own, used = _watch_routing(model)
    with torch.no_grad():
        out = model(tokens, cu_seqlens=cu, routing=SamplerRouting(record, recorded, replay=True))
    differs = 0
    for i in range(L):
        assert torch.equal(used[i][recorded], record[recorded, i].long())
        assert torch.equal(used[i][~recorded], own[i][~recorded])
        differs += int((_as_sets(own[i]) != _as_sets(record[:, i])).any(-1)[recorded].sum())
        assert torch.equal(out.tokens_per_expert[i], torch.bincount(used[i].reshape(-1), minlength=E))
    assert differs > 40  # the replayed experts are mostly not the router's own choice


def test_replaying_the_own_routing_changes_nothing_and_agreement_counts_equal_sets():
    model = _model(1)
    L = model.config.num_hidden_layers
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(2))
    own, _ = _watch_routing(model)
    with torch.no_grad():
        plain = model(tokens)
    record = torch.stack([own[i].flip(-1) for i in range(L)], dim=1).to(torch.uint8)  # same sets, other order
    record[5, 0] = (record[5, 0] + 1) % model.config.num_local_experts  # token 5, layer 0: another set
    everything = torch.ones(60, dtype=torch.bool)
    recorded = everything.clone()
    recorded[7] = False
    with torch.no_grad():
        compared = model(tokens, routing=SamplerRouting(record, recorded, replay=False))
        all_recorded = model(tokens, routing=SamplerRouting(record, everything, replay=False))
    assert torch.equal(compared.logits, plain.logits)  # compared only: the forward is the plain one
    assert compared.agreeing_tokens.tolist() == [58] + [59] * (L - 1)
    assert all_recorded.agreeing_tokens.tolist() == [59] + [60] * (L - 1)
    record[5, 0] = own[0][5]
    with torch.no_grad():
        same = model(tokens, routing=SamplerRouting(record, everything, replay=True))
    torch.testing.assert_close(same.logits, plain.logits, atol=1e-5, rtol=1e-5)


def test_router_gradient_under_replay_is_the_softmax_over_the_replayed_experts_logits():
    torch.manual_seed(0)
    block = SparseMoeBlock(cm.ModelConfig.from_dict(hf_config().to_dict()))
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(29, 128)
    with torch.no_grad():  # replay each token's k *least* likely experts: never the router's own choice
        replayed = (x @ block.gate.weight.T).argsort(dim=-1)[:, :2].to(torch.uint8)
    out, _ = block(x, SamplerRouting(replayed, torch.ones(29, dtype=torch.bool), replay=True))
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()

    # Independently, one token at a time: gate weights = softmax of the router logits of the replayed experts only.
    w_router = block.gate.weight.detach().clone().requires_grad_(True)
    gate_up, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    expected = []
    for t in range(x.shape[0]):
        chosen = replayed[t].long()
        weights = (w_router[chosen] @ x[t]).softmax(dim=-1)  # (k,)
        mixed = torch.zeros(128)
        for w, e in zip(weights, chosen):
            gate, up = (gate_up[e] @ x[t]).chunk(2)
            mixed = mixed + w * (down[e] @ (F.silu(gate) * up))
        expected.append(mixed)
    expected = torch.stack(expected)
    (expected * upstream).sum().backward()

    torch.testing.assert_close(out.detach(), expected.detach(), atol=1e-5, rtol=1e-5)
    assert block.gate.weight.grad.abs().sum() > 0
    torch.testing.assert_close(block.gate.weight.grad, w_router.grad, atol=1e-5, rtol=1e-4)


def test_sampler_records_the_experts_a_full_forward_of_the_sequence_picks():
    model = _model(2)
    L = model.config.num_hidden_layers
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (12, 30, 5)]
    # 3 slots for 6 sequences: continuous batching refills slots; n=2 shares each prompt's prefill
    out = cm.Sampler(model, max_batch=3).generate(prompts, SamplingParams(n=2, max_tokens=20, seed=3))
    for prompt, completions in zip(prompts, out):
        for c in completions:
            routed = c.routed_experts
            seq = prompt + c.token_ids[:-1]  # the last token was sampled, never run
            assert (routed.tokens, routed.layers, routed.top_k) == (len(seq), L, 2)
            routing = SamplerRouting(_ids(routed), torch.ones(len(seq), dtype=torch.bool), replay=False)
            with torch.no_grad():
                full = model(torch.tensor([seq]), routing=routing)
            assert full.agreeing_tokens.tolist() == [len(seq)] * L  # agreement 1.0 under the same weights
        prompt_bytes = len(prompt) * L * 2
        assert completions[0].routed_experts.ids[:prompt_bytes] == completions[1].routed_experts.ids[:prompt_bytes]

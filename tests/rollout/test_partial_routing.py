"""Partial rollouts keep the built-in sampler's routing record whole: the last segment's covers the response."""

from __future__ import annotations

import torch

import cispo.model as cm
from cispo.model.moe import SamplerRouting
from cispo.rollout.partial import PartialResponses
from cispo.types import SamplingParams


def test_a_response_sampled_in_segments_carries_the_routing_of_all_its_tokens():
    torch.manual_seed(0)
    config = cm.ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, head_dim=32, layer_types=["linear_attention", "full_attention"],
                            num_local_experts=4, lightning_chunk_size=16, initializer_range=0.08)
    model = cm.LightningMoELM(config).eval()
    sampler = cm.Sampler(model)
    prompts = [[5, 17, 42, 9], [200, 3]]
    partial = PartialResponses(prompts, SamplingParams(n=2, max_tokens=10, seed=1), segment_tokens=3)
    call = partial.first_segment()
    while call is not None:
        partial.add(sampler.generate(*call))
        call = partial.continuation()
    assert any(len(c.token_ids) > 3 for cs in partial.completions() for c in cs)  # some took several segments
    L = model.config.num_hidden_layers
    for prompt, completions in zip(prompts, partial.completions()):
        for c in completions:
            seq = prompt + c.token_ids[:-1]
            r = c.routed_experts
            assert r.tokens == len(seq)
            ids = torch.frombuffer(bytearray(r.ids), dtype=torch.uint8).view(r.tokens, r.layers, r.top_k)
            routing = SamplerRouting(ids, torch.ones(len(seq), dtype=torch.bool), replay=False)
            with torch.no_grad():
                full = model(torch.tensor([seq]), routing=routing)
            assert full.agreeing_tokens.tolist() == [len(seq)] * L  # same weights: the same experts everywhere

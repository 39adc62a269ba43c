"""The built-in sampler behind a real Ray actor: checkpoint in, completions and weight pushes through Ray."""

from __future__ import annotations

import pytest
import ray
import torch

import cispo.model as cm
from cispo.rollout.builtin_worker import BuiltinSamplerWorker
from cispo.rollout.engine import RolloutEngine
from cispo.types import Completion, SamplingParams


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    config = cm.ModelConfig(
        vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, block_size=16, num_local_experts=4,
        layer_types=["linear_attention", "linear_attention", "full_attention"],
    )
    model = cm.LightningMoELM(config)
    model.save_pretrained(tmp_path)
    return str(tmp_path), model


def test_worker_class_meets_the_protocol(checkpoint):
    assert isinstance(BuiltinSamplerWorker(checkpoint[0], seed=0), RolloutEngine)


def test_worker_as_ray_actor(ray_session, checkpoint):
    path, model = checkpoint
    worker = ray.remote(num_cpus=1)(BuiltinSamplerWorker).remote(path, seed=3, num_threads=1)
    params = SamplingParams(n=2, temperature=0.0, max_tokens=6)
    out = ray.get(worker.generate.remote([[1, 2, 3], [4, 5]], params))
    assert [len(g) for g in out] == [2, 2]
    assert all(isinstance(c, Completion) and len(c.token_ids) == 6 and c.policy_version == 0 for g in out for c in g)
    # The actor loaded the same weights: its greedy tokens are the local model's.
    local = cm.Sampler(model).generate([[1, 2, 3], [4, 5]], params)
    assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in local]

    # Push weights under which every position predicts token 9: branch outputs zeroed, so the
    # final hidden state is the normalised all-ones embedding, and only head row 9 scores it.
    pushed = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    for name, value in pushed:
        if name.endswith(("out_proj.weight", "o_proj.weight", "experts.down_proj")):
            value.zero_()
        elif name == "model.embed_tokens.weight":
            value.fill_(1.0)
        elif name == "lm_head.weight":
            value.zero_()
            value[9] = 1.0
    ray.get(worker.update_weights.remote(pushed, 4))
    assert ray.get(worker.policy_version.remote()) == 4
    after = ray.get(worker.generate.remote([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=3)))[0][0]
    assert after.policy_version == 4 and after.token_ids == [9, 9, 9]
    ray.kill(worker)

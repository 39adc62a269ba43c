"""Routing replay (R3) on the learner's side: the recorded experts in the train batch, the config's
rule, the moe/ metrics merged over ranks, and a real job on the hybrid model with replay on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cispo.config import Config, ConfigError, validate
from cispo.learner.batch import make_batch
from cispo.learner.rank import merge_rank_metrics
from cispo.learner.routing import routing_metrics
from cispo.train import train
from cispo.types import RoutedExperts, Sample


def _sample(i: int, prompt: list[int], response: list[int], routed: RoutedExperts | None) -> Sample:
    return Sample(sample_id=str(i), group_id="g", prompt_ids=prompt, response_ids=response,
                  behaviour_logprobs=[-1.0] * len(response), finish_reason="stop", policy_version=0, reward=1.0,
                  routed_experts=routed)


def test_batch_carries_recorded_experts_per_input_token_and_marks_the_unrecorded():
    ids = torch.arange(5 * 3 * 2, dtype=torch.uint8).view(5, 3, 2)  # prompt 3 + response 3 - 1 tokens, 3 layers, top-2
    samples = [_sample(0, [1, 2, 3], [4, 5, 6], RoutedExperts(ids.numpy().tobytes(), layers=3, top_k=2)),
               _sample(1, [1, 2], [4, 5, 6, 7, 8], None)]  # e.g. sampled by an engine that records nothing
    batch = make_batch(samples, pad_id=0, replay_routing=True)
    assert batch.routed_experts.shape == (2, 7, 3, 2) and batch.routed_experts.dtype == torch.uint8
    assert torch.equal(batch.routed_experts[0, :5], ids)
    assert batch.routing_recorded.tolist() == [[True] * 5 + [False] * 2, [False] * 7]
    first, _ = batch.chunks(2)
    assert first.replay_routing and torch.equal(first.routed_experts[0], batch.routed_experts[0])
    assert torch.equal(batch.rows(torch.tensor([1])).routing_recorded, batch.routing_recorded[1:])

    plain = make_batch(samples[1:], pad_id=0)
    assert plain.routed_experts is None and not plain.replay_routing
    assert all(part.routed_experts is None for part in plain.chunks(2))


def test_a_sample_takes_a_record_of_a_prefix_of_its_tokens_and_rejects_one_past_them():
    short = _sample(0, [1, 2, 3], [4, 5, 6], RoutedExperts(bytes(4 * 3 * 2), layers=3, top_k=2))
    assert make_batch([short], pad_id=0).routing_recorded.tolist() == [[True] * 4 + [False] * 2]
    with pytest.raises(ValueError, match="routed_experts cover 6 tokens, more than prompt \\+ response - 1 = 5"):
        _sample(0, [1, 2, 3], [4, 5, 6], RoutedExperts(bytes(6 * 3 * 2), layers=3, top_k=2))


@pytest.mark.parametrize("overrides, message", [
    (dict(model__arch="qwen2", rollout__engine="vllm"), "model.arch=qwen2 has no MoE layers"),
    (dict(model__arch="minimax", rollout__engine="vllm"), "rollout.engine=vllm records no routing"),
    (dict(model__arch="minimax", rollout__engine="builtin", model__num_experts=300), "up to 256 experts"),
])
def test_routing_replay_without_a_record_to_replay_is_refused_naming_the_key(overrides, message):
    cfg = Config()
    cfg.algo.routing_replay = True
    for dotted, value in overrides.items():
        group, key = dotted.split("__")
        setattr(getattr(cfg, group), key, value)
    with pytest.raises(ConfigError, match=f"algo.routing_replay: .*{message}"):
        validate(cfg)


def test_moe_metrics_merge_ranks_exactly():
    ranks = [{"tokens": 3.0, "moe_load_sums": [[4, 0, 2, 0], [1, 1, 1, 3]], "moe_agreement_sums": [5, 6]},
             {"tokens": 5.0, "moe_load_sums": [[0, 4, 2, 0], [1, 1, 1, 1]], "moe_agreement_sums": [2, 4]}]
    merged = merge_rank_metrics(ranks)
    assert merged["moe_load_sums"] == [[4, 4, 4, 0], [2, 2, 2, 4]]
    assert routing_metrics(merged["moe_load_sums"], merged["moe_agreement_sums"]) == {
        "moe/layer0/load_max_over_mean": 4 / 3, "moe/layer1/load_max_over_mean": 4 / 2.5,
        "moe/routing_agreement": 0.7}
    assert "moe/routing_agreement" not in routing_metrics([[1, 1]], [0, 0])  # nothing recorded: not logged


@pytest.mark.slow
def test_job_with_routing_replay_logs_agreement_and_expert_load(ray_session, job_config):
    cfg = job_config(model__arch="minimax", model__num_layers=4, model__softmax_every=4,
                     model__intermediate_size=256, rollout__engine="builtin", learner__zero_stage=3,
                     algo__routing_replay=True)
    train(validate(cfg))
    lines = (Path(cfg.trainer.output_dir) / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        # Sampler (decode path) and learner (packed path) hold the same weights: the same experts.
        assert m["moe/routing_agreement"] > 0.99
        assert all(m[f"moe/layer{i}/load_max_over_mean"] >= 1.0 for i in range(4))
        assert m["learner/prob_corr"] > 0.999

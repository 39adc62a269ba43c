"""vLLM rollout workers as Ray actors: sampling format, and the learner-to-engine weight push."""

from __future__ import annotations

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cispo.learner.batch import make_batch, sft_batch
from cispo.config import Config
from cispo.envs.addition import AdditionTask
from cispo.algo.losses import resolve_loss
from cispo.learner.group import LearnerGroup
from cispo.policy import create_policy
from cispo.rollout.engines import EngineGroup, EngineSpec, WeightPushError
from cispo.rollout.source import Prompt, to_group
from cispo.types import SamplingParams

PROMPTS = ["1+2=", "7+5=", "3+3=", "9+0="]


@pytest.fixture(scope="module", params=[True, False], ids=["tied-head", "own-head"])
def stack(request, ray_session, tmp_path_factory):
    """A learner rank and a vLLM engine started from the same random policy, whose LM head is its input
    embedding matrix (model.tie_embeddings) or a matrix of its own."""
    cfg = Config()
    cfg.learner.lr = 1e-2
    cfg.model.tie_embeddings = request.param
    policy = create_policy(cfg.model, AdditionTask.build_tokenizer(), tmp_path_factory.mktemp("policy"))
    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    learner = LearnerGroup(cfg, str(policy), resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
    engines = EngineGroup(EngineSpec("vllm", str(policy), 1.0, 0.0, {"max_model_len": 64}),
                           num_workers=1, generate_timeout_s=300, push_timeout_s=60)
    yield learner, engines, tokenizer
    engines.shutdown()
    learner.shutdown()


def hf_greedy(weights: dict, policy_dir: str, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    model.load_state_dict(weights)
    outs = []
    for p in prompts:
        ids = model.generate(torch.tensor([p]), max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        outs.append(ids[0, len(p):].tolist())
    return outs


def test_samples_carry_logprobs_and_version(stack):
    _, engines, tokenizer = stack
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    out = engines.generate(prompts, SamplingParams(n=3, max_tokens=5, seed=0))
    assert len(out) == len(PROMPTS) and all(len(c) == 3 for c in out)
    for completions in out:
        for c in completions:
            assert 1 <= len(c.token_ids) == len(c.logprobs) <= 5
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length") and c.policy_version == 0


def test_push_makes_engine_greedy_equal_learner_greedy(stack):
    learner, engines, tokenizer = stack
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=6)
    before = [c[0].token_ids for c in engines.generate(prompts, greedy)]

    # A few large supervised steps move the learner's weights well away from the engine's.
    answers = [tokenizer("12", add_special_tokens=False).input_ids] * len(prompts)
    for _ in range(3):
        learner.sft_step(sft_batch(prompts, answers, tokenizer.pad_token_id), lr=1e-2)
    weights_ref = learner.weights_ref()
    engines.push_weights(weights_ref, version=7)

    after = [c[0].token_ids for c in engines.generate(prompts, greedy)]
    expected = hf_greedy(dict(ray.get(weights_ref)), engines.spec.model_dir, prompts, max_tokens=6)
    assert after == expected
    assert after != before
    assert ray.get(engines.workers[0].policy_version.remote()) == 7

    # The engine's log-probs are the learner's, token for token (the sync path has no mismatch).
    sampled = engines.generate(prompts, SamplingParams(n=2, max_tokens=4, seed=1))
    samples = [s for row, p, c in zip(PROMPTS, prompts, sampled)
               for s in to_group(Prompt(p, row, {}), c, tokenizer.decode).samples]
    batch = make_batch(samples, tokenizer.pad_token_id)
    learner_logp = learner.logprobs(batch)
    mask = batch.loss_mask.bool()
    torch.testing.assert_close(learner_logp[mask], batch.old_logp[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stack", [True], ids=["tied-head"], indirect=True)
def test_push_that_cannot_finish_in_time_fails_loudly(stack):
    learner, engines, tokenizer = stack
    busy = engines.workers[0].generate.remote([tokenizer(p).input_ids for p in PROMPTS] * 64,
                                              SamplingParams(n=8, max_tokens=60, seed=0))
    engines.push_timeout_s = 0.05  # the engine is busy generating: the push queues behind it
    try:
        with pytest.raises(WeightPushError, match="did not finish within rollout.weight_push_timeout_s"):
            engines.push_weights(learner.weights_ref(), version=8)
    finally:
        engines.push_timeout_s = 60
        ray.get(busy)

"""The built-in sampler: output format, log-probs the learner agrees with, continuous batching, stops."""

from __future__ import annotations

import pytest
import torch
from minimax_reference import hf_config

import cispo.model as cm
from cispo.model.checkpoint import ours_to_hf
from cispo.rollout.engine import RolloutEngine
from cispo.types import SamplingParams

FAVOURITE = 7  # the token the "confident" weights below emit


def _model(seed: int = 0) -> cm.LightningMoELM:
    torch.manual_seed(seed)
    return cm.LightningMoELM(cm.ModelConfig.from_dict({**hf_config().to_dict(), "lightning_chunk_size": 16})).eval()


def _confident_weights(model: cm.LightningMoELM, p_logit: float) -> list[tuple[str, torch.Tensor]]:
    """Weights under which every position predicts FAVOURITE with logit p_logit over a flat rest.

    Branch outputs are zeroed, so the residual stream is the (normalised) embedding, which is
    the same all-ones vector for every token; the LM head then scores only FAVOURITE.
    """
    out = []
    for name, p in model.named_parameters():
        value = p.detach().clone()
        if name.endswith(("out_proj.weight", "o_proj.weight", "experts.down_proj")):
            value.zero_()
        elif name == "model.embed_tokens.weight":
            value.fill_(1.0)
        elif name == "lm_head.weight":
            value.zero_()
            value[FAVOURITE] = p_logit / value.shape[1]
        out.append((name, value))
    return out


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in (12, 30, 5, 21, 17)]


def test_satisfies_the_rollout_engine_protocol():
    assert isinstance(cm.Sampler(_model()), RolloutEngine)


def test_output_format_and_logprobs_match_the_learners_computation():
    model = _model()
    sampler = cm.Sampler(model, max_batch=4, seed=1)
    params = SamplingParams(n=3, temperature=0.8, top_p=0.9, top_k=50, max_tokens=20)
    out = sampler.generate(_prompts(), params)
    assert len(out) == 5 and all(len(group) == 3 for group in out)
    for prompt, group in zip(_prompts(), out):
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) == 20 and c.finish_reason == "length"
            assert c.policy_version == 0 and all(lp <= 0 for lp in c.logprobs)
            # The learner: log_softmax(logits / temperature) of the full forward at the response tokens.
            ids = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1 : -1] / params.temperature
            expected = logits.log_softmax(-1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def _count_prefills(model: cm.LightningMoELM) -> list[list[int]]:
    """Record the slots of every prefill call the model gets from now on."""
    calls = []
    prefill = model.prefill

    def counting_prefill(tokens, cu_seqlens, cache, slots):
        calls.append(slots.tolist())
        return prefill(tokens, cu_seqlens, cache, slots)

    model.prefill = counting_prefill
    return calls


def test_samples_of_a_prompt_share_one_prefill():
    """n samples admitted together: the prompt runs once, its state is copied to the other slots."""
    model = _model(1)
    calls = _count_prefills(model)
    greedy = cm.Sampler(model, max_batch=8).generate(_prompts()[:2], SamplingParams(n=4, temperature=0.0, max_tokens=6))
    assert calls == [[0, 4]]  # one document per prompt, into the first slot of its samples
    for prompt, group in zip(_prompts(), greedy):
        alone = cm.Sampler(model, max_batch=1).generate([prompt], SamplingParams(temperature=0.0, max_tokens=6))[0][0]
        assert [c.token_ids for c in group] == [alone.token_ids] * 4


def test_continuous_batching_refills_slots_and_does_not_change_results():
    """Greedy results with 3 slots for 10 sequences equal each prompt decoded alone."""
    model = _model(2)
    calls = _count_prefills(model)
    greedy = SamplingParams(n=2, temperature=0.0, max_tokens=9)
    batched = cm.Sampler(model, max_batch=3).generate(_prompts(), greedy)
    assert len(calls) > 2 and {s for c in calls for s in c} == {0, 1, 2}  # finished slots took new prompts
    for prompt, group in zip(_prompts(), batched):
        alone = cm.Sampler(model, max_batch=1).generate([prompt], SamplingParams(temperature=0.0, max_tokens=9))[0][0]
        assert [c.token_ids for c in group] == [alone.token_ids] * 2
        with torch.no_grad():  # greedy = argmax of the full forward at every step
            logits = model(torch.tensor([prompt + alone.token_ids])).logits[0, len(prompt) - 1 : -1]
        assert logits.argmax(-1).tolist() == alone.token_ids


def test_stop_token_ends_a_sequence_and_is_kept():
    model = _model()
    sampler = cm.Sampler(model)
    sampler.update_weights(_confident_weights(model, p_logit=30.0), version=1)
    out = sampler.generate([[1, 2, 3], [4]], SamplingParams(n=2, stop_token_ids=(FAVOURITE,), max_tokens=10))
    for group in out:
        for c in group:
            assert c.token_ids == [FAVOURITE] and c.finish_reason == "stop" and len(c.logprobs) == 1


def test_repetition_early_stop():
    """N consecutive tokens each with p > 0.99 -> finish 'repetition' after exactly N tokens."""
    model = _model()
    sampler = cm.Sampler(model)
    sampler.update_weights(_confident_weights(model, p_logit=30.0), version=1)  # p(FAVOURITE) ~ 1
    rep = SamplingParams(max_tokens=50, repetition_window=6, repetition_prob=0.99)
    (c,), = sampler.generate([[1, 2, 3]], rep)
    assert c.finish_reason == "repetition" and c.token_ids == [FAVOURITE] * 6
    assert min(c.logprobs) > torch.log(torch.tensor(0.99)).item()
    # A logit of 5 over 255 flat rivals gives p ~ 0.37: never confident enough, runs to the length cap.
    sampler.update_weights(_confident_weights(model, p_logit=5.0), version=2)
    (c,), = sampler.generate([[1, 2, 3]], rep)
    assert c.finish_reason == "length" and len(c.token_ids) == 50


def test_update_weights_changes_output_and_version():
    model = _model(3)
    sampler = cm.Sampler(model)
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    before = sampler.generate([[1, 2, 3]], greedy)[0][0]
    assert before.token_ids != [FAVOURITE] * 8 and sampler.policy_version() == 0
    sampler.update_weights(_confident_weights(model, p_logit=30.0), version=5)
    after = sampler.generate([[1, 2, 3]], greedy)[0][0]
    assert after.token_ids == [FAVOURITE] * 8
    assert sampler.policy_version() == 5 and after.policy_version == 5
    with pytest.raises(KeyError, match="no parameter named"):
        sampler.update_weights([("model.nope.weight", torch.zeros(1))], version=6)


def test_seed_makes_sampling_reproducible_and_truncation_works():
    sampler = cm.Sampler(_model(4), max_batch=3)
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=123)
    assert sampler.generate(_prompts(), params) == sampler.generate(_prompts(), params)
    greedy = sampler.generate(_prompts(), SamplingParams(temperature=0.0, max_tokens=12))
    top1 = sampler.generate(_prompts(), SamplingParams(temperature=1.0, top_k=1, max_tokens=12, seed=9))
    nucleus = sampler.generate(_prompts(), SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=12, seed=9))
    ids = lambda out: [c.token_ids for group in out for c in group]  # noqa: E731
    assert ids(top1) == ids(greedy) == ids(nucleus)


def test_update_weights_with_a_tied_head_and_per_expert_names():
    """Tied embeddings and transformers' on-disk expert names (w1/w2/w3) are accepted too."""
    torch.manual_seed(0)
    source = cm.LightningMoELM(cm.ModelConfig.from_dict(hf_config(tie_word_embeddings=True).to_dict()))
    target = cm.LightningMoELM(cm.ModelConfig.from_dict(hf_config(tie_word_embeddings=True).to_dict()))
    cm.Sampler(target).update_weights(ours_to_hf(source.state_dict(), source.config).items(), version=2)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name

"""The DeepSpeed learner as real Ray actors: 1 rank and 2 ranks take the same step."""

from __future__ import annotations

import os
import random

import pytest
import ray
import torch

from cispo.learner.batch import make_batch, sft_batch
from cispo.config import Config
from cispo.envs.addition import AdditionTask
from cispo.learner.group import LearnerGroup
from cispo.learner.minibatch import step_mini_batches
from cispo.policy import create_policy
from cispo.algo.losses import resolve_loss
from cispo.types import Sample


def random_samples(n: int, vocab: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [1] + [rng.randrange(3, vocab) for _ in range(rng.randint(2, 5))]
        response = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 6))]
        out.append(Sample(sample_id=str(i), group_id=str(i // 4), prompt_ids=prompt, response_ids=response,
                          behaviour_logprobs=[-rng.uniform(1.5, 4.0) for _ in response], finish_reason="stop",
                          policy_version=0, reward=float(i % 2), advantage=rng.uniform(-1.5, 1.5)))
    return out


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    cfg = Config()
    return str(create_policy(cfg.model, AdditionTask.build_tokenizer(), tmp_path_factory.mktemp("policy")))


def step_weights(cfg: Config, policy_dir: str, batch, mini_batches=None) -> tuple[dict, dict]:
    group = LearnerGroup(cfg, policy_dir, resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
    try:
        metrics = group.train_step(batch, mini_batches)
        metrics["optimizer_steps"] = group.optimizer_steps()
        return dict(ray.get(group.weights_ref())), metrics
    finally:
        group.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
@pytest.mark.parametrize("mini_batches", [1, 3])
def test_one_and_two_ranks_take_the_same_step(ray_session, policy_dir, zero_stage, mini_batches):
    """With K mini-batches every update is the same on 1 and 2 ranks, so the K updates are too."""
    cfg = Config()
    cfg.learner.lr = 1e-2  # large, so that a wrong normaliser or a lost shard shows clearly
    # Above the float noise of gradients that are zero in exact arithmetic (the key bias: softmax ignores
    # it), which Adam with M1's 1e-15 turns into ±lr steps of random sign after a few updates; and with it
    # Adam's step is no longer blind to a uniformly wrong normaliser.
    cfg.learner.eps = 1e-6
    cfg.learner.zero_stage = zero_stage
    # Several micro-batches per rank in each update: accumulation is exercised too.
    cfg.learner.micro_batch_size = 3 if mini_batches == 1 else 1
    samples = random_samples(11, vocab=15)  # odd: ranks get unequal shards; groups of 4, 4 and 3
    batch = make_batch(samples, pad_id=0)
    plan = step_mini_batches([s.group_id for s in samples], mini_batches, epochs=1, split_groups=False,
                             seed=0, step=0, min_rows=2)
    assert len(plan) == mini_batches

    cfg.learner.world_size = 1
    one, m1 = step_weights(cfg, policy_dir, batch, plan)
    cfg.learner.world_size = 2
    two, m2 = step_weights(cfg, policy_dir, batch, plan)

    assert one.keys() == two.keys()
    # Each rank cuts its shard by length (its own summation order): Adam turns the rounding of a gradient
    # element near eps into a step off by up to ~0.2% of lr (2e-5 measured on one o_proj element).
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=5e-5, msg=name)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-4)
    assert m1["tokens"] == m2["tokens"] == float(batch.loss_mask.sum())
    assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)
    assert m1["optimizer_steps"] == m2["optimizer_steps"] == mini_batches
    # Per update (n, Σr, Σr², Σ|r-1|): the same tokens, and the same drift from pi_old, on both.
    assert len(m1["is_sums"]) == len(m2["is_sums"]) == mini_batches
    for u1, u2 in zip(m1["is_sums"], m2["is_sums"]):
        assert u1[0] == u2[0] and u1[1:] == pytest.approx(u2[1:], rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_the_step_moves_log_probs_along_the_advantages(ray_session, policy_dir):
    cfg = Config()
    cfg.learner.lr = 1e-4  # small: the first-order effect of the step dominates
    batch = make_batch(random_samples(8, vocab=15, seed=1), pad_id=0)
    group = LearnerGroup(cfg, policy_dir, resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
    try:
        before = group.logprobs(batch)
        group.train_step(batch)
        after = group.logprobs(batch)
    finally:
        group.shutdown()
    change = ((after - before) * batch.loss_mask).sum(-1)  # (B,) summed log-prob change per sample
    # Samples share weights, so one sample may move against its advantage; the step as a
    # whole goes up the objective sum_i A_i logp_i, and favoured samples gain on disfavoured ones.
    assert float((batch.advantages * change).sum()) > 0
    assert change[batch.advantages > 0].mean() > change[batch.advantages < 0].mean()


@pytest.mark.slow
def test_the_warm_up_fits_the_policy_itself_at_any_sampling_temperature(ray_session, policy_dir):
    """SFT is the references' likelihood under the policy, not under the tempered policy the sampler draws
    from: a warm-up step is the same at rollout.temperature 1 and 2, and its loss is the untempered NLL."""
    samples = random_samples(6, vocab=15, seed=2)
    batch = sft_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples], pad_id=0)
    mask = batch.loss_mask.bool()
    logp, loss, weights = {}, {}, {}
    for temperature in (1.0, 2.0):
        cfg = Config()
        cfg.rollout.temperature = temperature
        group = LearnerGroup(cfg, policy_dir, resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
        try:
            initial = dict(ray.get(group.weights_ref()))
            logp[temperature] = group.logprobs(batch)  # of the tempered policy, as the sampler's
            loss[temperature] = group.sft_step(batch, lr=1e-2)["sft_loss"]
            weights[temperature] = dict(ray.get(group.weights_ref()))
        finally:
            group.shutdown()
        assert any(not torch.equal(weights[temperature][n], initial[n]) for n in initial)  # the step moved
    assert not torch.allclose(logp[1.0][mask], logp[2.0][mask])  # the temperature reaches the RL log-probs
    untempered_nll = float(-(logp[1.0] * batch.loss_mask).sum() / batch.loss_mask.sum())
    assert loss[1.0] == pytest.approx(untempered_nll, rel=1e-5)
    assert loss[2.0] == pytest.approx(untempered_nll, rel=1e-5)
    for name in weights[1.0]:
        torch.testing.assert_close(weights[2.0][name], weights[1.0][name], msg=name)


@pytest.mark.slow
def test_idle_cores_are_split_between_the_ranks_of_a_node(ray_session, policy_dir):
    """The synchronous driver lets the ranks step with every core of their node (here, this one)."""
    cores = len(os.sched_getaffinity(0))
    for world_size in (1, 2):
        cfg = Config()
        cfg.learner.world_size = world_size
        group = LearnerGroup(cfg, policy_dir, resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
        try:
            assert group.use_idle_cores() == [max(1, cores // world_size)] * world_size
        finally:
            group.shutdown()


@pytest.mark.slow
def test_micro_batches_cut_by_length_take_the_same_step_on_a_dense_model(ray_session, tmp_path):
    """Responses that stop at once beside responses that run long: cut by length, the dense learner
    computes two trimmed micro-batches instead of one padded one, and takes the same step."""
    cfg = Config()
    cfg.model.arch = "qwen2"
    cfg.learner.lr, cfg.learner.eps = 1e-2, 1e-6  # as above: a wrong step shows clearly
    policy = str(create_policy(cfg.model, AdditionTask.build_tokenizer(), tmp_path / "policy"))
    samples = random_samples(12, vocab=15, seed=2)
    for i, s in enumerate(samples[::2]):  # every other sample runs to 30 tokens
        s.response_ids, s.loss_mask = [3 + (i + j) % 12 for j in range(30)], [1] * 30
        s.behaviour_logprobs = [-2.0 - 0.01 * j for j in range(30)]
    batch = make_batch(samples, pad_id=0)
    real = batch.attention_mask[:, 1:].bool()

    results = {}
    for by_length in (False, True):
        cfg.learner.micro_batches_by_length = by_length
        group = LearnerGroup(cfg, policy, resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
        try:
            _, [plan] = group._shards(batch)
            logp = group.logprobs(batch)
            metrics = group.train_step(batch)
            results[by_length] = len(plan), logp, dict(ray.get(group.weights_ref())), metrics
        finally:
            group.shutdown()
    (n_off, logp_off, off, m_off), (n_on, logp_on, on, m_on) = results[False], results[True]
    assert (n_off, n_on) == (1, 2)
    torch.testing.assert_close(logp_on[real], logp_off[real], rtol=1e-5, atol=1e-5)
    for name in off:
        torch.testing.assert_close(on[name], off[name], rtol=1e-4, atol=1e-5, msg=name)
    assert m_on["loss"] == pytest.approx(m_off["loss"], rel=1e-4)
    assert m_on["tokens"] == m_off["tokens"] == float(batch.loss_mask.sum())


@pytest.mark.slow
def test_zero_0_takes_zero_2s_step_and_reports_its_gradient_norm(ray_session, policy_dir):
    """Without ZeRO, DeepSpeed clips in plain torch and keeps no norm: the learner measures it itself."""
    cfg = Config()
    cfg.learner.lr, cfg.learner.eps, cfg.learner.grad_clip = 1e-2, 1e-6, 0.5  # the norm here is ~6: clipped
    batch = make_batch(random_samples(8, vocab=15, seed=3), pad_id=0)
    cfg.learner.zero_stage = 2
    zero2, m2 = step_weights(cfg, policy_dir, batch)
    cfg.learner.zero_stage = 0
    zero0, m0 = step_weights(cfg, policy_dir, batch)
    assert m0["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4) and m2["grad_norm"] > 0.5
    for name in zero2:
        torch.testing.assert_close(zero0[name], zero2[name], rtol=1e-4, atol=5e-5, msg=name)

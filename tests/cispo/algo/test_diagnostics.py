"""Mismatch statistics and pass@k against direct computation and brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cispo.algo.diagnostics import mismatch_alarm, mismatch_stats, mismatch_sums, pass_at_k, train_inference_mismatch


def batch(seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    learner = -torch.rand(4, 7, generator=g, dtype=torch.float64) * 4
    sampler = learner + torch.randn(4, 7, generator=g, dtype=torch.float64) * noise
    mask = (torch.rand(4, 7, generator=g) > 0.3).double()
    return sampler, learner, mask


def test_mismatch_matches_a_direct_pearson_over_trained_tokens():
    sampler, learner, mask = batch()
    sampler = sampler.masked_fill(mask == 0, 5.0)  # garbage off the mask must not count
    xs = [math.exp(float(s)) for s, m in zip(sampler.flatten(), mask.flatten()) if m > 0]
    ys = [math.exp(float(l)) for l, m in zip(learner.flatten(), mask.flatten()) if m > 0]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    corr = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    stats = train_inference_mismatch(sampler, learner, mask)
    assert stats["prob_corr"] == pytest.approx(corr, rel=1e-10)
    assert stats["prob_abs_diff_mean"] == pytest.approx(sum(abs(x - y) for x, y in zip(xs, ys)) / n)
    assert stats["tokens"] == n


def test_mismatch_sums_from_shards_add_up_to_the_full_batch():
    sampler, learner, mask = batch(seed=1)
    shards = mismatch_sums(sampler[:2], learner[:2], mask[:2]) + mismatch_sums(sampler[2:], learner[2:], mask[2:])
    full = train_inference_mismatch(sampler, learner, mask)
    assert mismatch_stats(shards) == pytest.approx(full)


def test_identical_probabilities_correlate_perfectly_and_undefined_cases_are_nan():
    _, learner, mask = batch(seed=2)
    stats = train_inference_mismatch(learner, learner, mask)
    assert stats["prob_corr"] == pytest.approx(1.0) and stats["prob_abs_diff_mean"] == 0.0
    one = torch.zeros(1, 3, dtype=torch.float64)
    assert math.isnan(train_inference_mismatch(one, one, torch.tensor([[1.0, 0, 0]]))["prob_corr"])
    empty = train_inference_mismatch(one, one, torch.zeros(1, 3))
    assert math.isnan(empty["prob_corr"]) and math.isnan(empty["prob_abs_diff_mean"]) and empty["tokens"] == 0


def test_mismatch_alarm():
    sampler, learner, mask = batch(seed=3, noise=0.6)
    bad = train_inference_mismatch(sampler, learner, mask)
    good = train_inference_mismatch(learner, learner, mask)
    assert bad["prob_corr"] < 0.99
    assert "correlation" in mismatch_alarm(bad, min_corr=0.99)
    assert mismatch_alarm(good, min_corr=0.99, max_abs_diff=1e-9) is None
    assert "mean |p_sampler - p_learner|" in mismatch_alarm(bad, min_corr=0.0, max_abs_diff=1e-3)
    assert mismatch_alarm({"prob_corr": math.nan, "prob_abs_diff_mean": 0.0, "tokens": 1}, min_corr=0.99) is None


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases_and_large_n():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="n=3, c=4"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k=0"):
        pass_at_k(3, 1, 0)

"""Advantage estimators against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cispo.algo import advantages
from cispo.algo.advantages import advantage_names, compute_advantages

NAN = float("nan")


def adv(name, rows, **kw):
    return compute_advantages(name, torch.tensor(rows, dtype=torch.float64), **kw)


def same(actual, expected):
    """True when `actual` (a tensor) equals the nested list `expected` to float precision."""
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))
    return True


def test_grpo_by_hand_sample_and_population_std():
    # Rewards 1, 0, 0, 1: mean 0.5; squared deviations sum to 1.
    # Sample std sqrt(1/3) = 0.57735, population std 0.5.
    s = 1 / math.sqrt(1 / 3)
    assert same(adv("grpo", [[1, 0, 0, 1]], eps=0.0), [[0.5 * s, -0.5 * s, -0.5 * s, 0.5 * s]])
    assert same(adv("grpo", [[1, 0, 0, 1]], eps=0.0, unbiased_std=False), [[1, -1, -1, 1]])
    # Rewards 3, 1, 2: mean 2, sample std 1.
    assert same(adv("grpo", [[3, 1, 2]], eps=0.0), [[1, -1, 0]])
    # eps sits in the denominator: (3 - 2) / (1 + 0.5).
    assert adv("grpo", [[3, 1, 2]], eps=0.5)[0, 0].item() == pytest.approx(1 / 1.5)


def test_drgrpo_is_mean_only():
    assert same(adv("drgrpo", [[3, 1, 2], [0, 0, 1]]), [[1, -1, 0], [-1 / 3, -1 / 3, 2 / 3]])


def test_rloo_leaves_one_out():
    # Sample 0: 3 - (1 + 2) / 2 = 1.5; sample 1: 1 - (3 + 2) / 2 = -1.5; sample 2: 2 - 2 = 0.
    assert same(adv("rloo", [[3, 1, 2]]), [[1.5, -1.5, 0.0]])


def test_failed_samples_get_zero_and_leave_the_statistics():
    # The NaN sample is ignored: the group is {1, 0} (and {1, 0, 2} for the second row).
    rows = [[1, NAN, 0], [1, 0, NAN, 2]]
    assert same(adv("drgrpo", [rows[0]]), [[0.5, 0.0, -0.5]])
    assert same(adv("rloo", [rows[1]]), [[0.0, -1.5, 0.0, 1.5]])
    # {1, 0}: mean 0.5, sample std sqrt(0.5).
    assert same(adv("grpo", [rows[0]], eps=0.0), [[0.5 / math.sqrt(0.5), 0.0, -0.5 / math.sqrt(0.5)]])


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_groups_without_signal_get_zero(name):
    # All equal (including values whose float mean is inexact), one valid sample, none valid.
    rows = [[0.1, 0.1, 0.1], [1.0, NAN, NAN], [NAN, NAN, NAN], [0.0, 0.0, 1.0]]
    out = adv(name, rows)
    assert (out[:3] == 0).all() and (out[3] != 0).all()


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_advantages_sum_to_zero_in_every_group(name):
    rewards = torch.rand(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rewards[1, 3] = NAN
    out = compute_advantages(name, rewards)
    torch.testing.assert_close(out.sum(-1), torch.zeros(5, dtype=torch.float64))


def test_batch_norm_divides_by_the_batch_std():
    rows = [[1, 0, 0, 1], [2, 2, 2, 2], [3, 1, NAN, 2]]
    raw = adv("drgrpo", rows).tolist()
    valid = [v for row, r in zip(raw, rows) for v, x in zip(row, r) if not math.isnan(x)]
    mean = sum(valid) / len(valid)
    std = math.sqrt(sum((v - mean) ** 2 for v in valid) / (len(valid) - 1))
    expected = [[v / (std + 1e-6) for v in row] for row in raw]
    assert same(adv("drgrpo", rows, batch_norm=True), expected)
    assert (adv("drgrpo", rows, batch_norm=True)[1] == 0).all()  # a no-signal group stays exactly 0


def test_dtype_and_shape_are_kept_and_bad_input_is_refused():
    out = compute_advantages("grpo", torch.tensor([[1.0, 0.0]], dtype=torch.float32))
    assert out.dtype == torch.float32 and out.shape == (1, 2)
    with pytest.raises(ValueError, match=r"\[N_groups, G\]"):
        compute_advantages("grpo", torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="inf"):
        compute_advantages("grpo", torch.tensor([[1.0, float("inf")]]))


def test_registry_refuses_duplicates_and_lists_names_on_a_miss(monkeypatch):
    monkeypatch.setattr(advantages, "_ESTIMATORS", dict(advantages._ESTIMATORS))
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        advantages.register_advantage("grpo")(advantages.rloo_advantage)
    with pytest.raises(ValueError, match="unknown advantage estimator 'gpro'") as err:
        compute_advantages("gpro", torch.zeros(1, 2))
    assert all(name in str(err.value) for name in advantage_names())
    assert advantage_names() == ["drgrpo", "grpo", "rloo"]

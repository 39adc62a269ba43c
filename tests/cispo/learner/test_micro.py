"""Micro-batches cut by length (`cispo.learner.micro`): every row once, equal counts, less padding."""

from __future__ import annotations

import random

import torch

from cispo.learner.batch import make_batch
from cispo.learner.micro import plan_micro_batches
from cispo.types import Sample


def computed_tokens(lengths: torch.Tensor, plan: list[torch.Tensor]) -> int:
    return sum(len(rows) * int(lengths[rows].max()) for rows in plan)


def test_rows_that_stop_early_and_rows_at_the_cap_go_to_separate_micro_batches():
    rng = random.Random(0)
    lengths = torch.tensor([10 + (64 if rng.random() < 0.6 else rng.randint(1, 4)) for _ in range(64)])
    [plan] = plan_micro_batches([lengths], count=1, max_rows=64, by_length=True)
    assert len(plan) == 2
    assert sorted(torch.cat(plan).tolist()) == list(range(64))
    assert {int(lengths[rows].max()) for rows in plan} == {74, int(lengths[lengths < 74].max())}
    assert computed_tokens(lengths, plan) < 0.7 * 64 * 74


def test_equal_lengths_stay_in_as_few_micro_batches_as_the_row_limit_allows():
    lengths = torch.full((64,), 20)
    assert [len(p) for p in plan_micro_batches([lengths], 1, 64, True)[0]] == [64]
    assert [len(p) for p in plan_micro_batches([lengths], 4, 16, True)[0]] == [16] * 4


def test_every_shard_gets_the_same_count_and_no_part_passes_the_row_limit():
    rng = random.Random(1)
    shards = [torch.tensor([rng.choice([5, 6, 40, 41, 200]) for _ in range(n)]) for n in (37, 36, 36)]
    plans = plan_micro_batches(shards, count=3, max_rows=13, by_length=True)
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) >= 3
    for lengths, plan in zip(shards, plans):
        assert sorted(torch.cat(plan).tolist()) == list(range(len(lengths)))
        assert all(1 <= len(rows) <= 13 for rows in plan)
        # No worse than the row-count cut in order, which is what a packed model gets.
        in_order = plan_micro_batches([lengths], len(plan), 13, by_length=False)[0]
        assert computed_tokens(lengths, plan) <= computed_tokens(lengths, in_order)


def test_a_packed_model_keeps_consecutive_rows():
    plan = plan_micro_batches([torch.tensor([3, 70, 3, 70, 3])], 2, 3, by_length=False)[0]
    assert [p.tolist() for p in plan] == [[0, 1, 2], [3, 4]]


def test_a_trimmed_micro_batch_keeps_every_real_token():
    samples = [Sample(sample_id=str(i), group_id="0", prompt_ids=[1, 5, 6], response_ids=[7] * n,
                      behaviour_logprobs=[-0.5 - i] * n, finish_reason="stop", policy_version=0, reward=1.0,
                      advantage=1.0) for i, n in enumerate([2, 30, 1, 29, 3, 30])]
    batch = make_batch(samples, pad_id=0)
    short = batch.attention_mask.sum(-1).argsort()[:3]
    part = batch.rows(short).trimmed()
    width = int(batch.attention_mask[short].sum(-1).max())
    assert part.input_ids.shape == (3, width) and part.loss_mask.shape == (3, width - 1)
    assert part.attention_mask.sum() == batch.attention_mask[short].sum()
    assert part.loss_mask.sum() == batch.loss_mask[short].sum()
    torch.testing.assert_close(part.old_logp, batch.old_logp[short, :width - 1])

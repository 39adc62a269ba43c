"""How a step's samples are split into the updates it takes (no Ray: the plan is a pure function)."""

from __future__ import annotations

import pytest

from cispo.config import Config, ConfigError, validate
from cispo.learner.minibatch import step_mini_batches

GROUPS = [f"g{i // 4}" for i in range(24)]  # 6 groups of 4 samples, in order


def rows(plan):
    return [part.tolist() for part in plan]


def test_groups_stay_whole_and_every_sample_is_trained_once_per_epoch():
    plan = step_mini_batches(GROUPS, mini_batches=4, epochs=2, split_groups=False, seed=0, step=3)
    assert len(plan) == 8
    for epoch in (plan[:4], plan[4:]):
        assert sorted(r for part in epoch for r in part.tolist()) == list(range(24))
        assert sorted(len(part) for part in epoch) == [4, 4, 8, 8]  # 6 groups cut 2, 2, 1, 1
        for part in epoch:
            assert len({GROUPS[r] for r in part.tolist()}) * 4 == len(part)  # whole groups only
    assert rows(plan[:4]) != rows(plan[4:])  # each epoch reshuffles


def test_the_plan_is_a_function_of_seed_and_step_only():
    """Exact resume: a resumed job takes the same updates at the same step."""
    def plan(seed, step):
        return rows(step_mini_batches(GROUPS, 3, 1, False, seed=seed, step=step))

    assert plan(0, 5) == plan(0, 5)
    assert plan(0, 5) != plan(0, 6) and plan(0, 5) != plan(1, 5)


def test_split_groups_moves_single_samples():
    plan = step_mini_batches(GROUPS, mini_batches=4, epochs=1, split_groups=True, seed=0, step=0)
    assert [len(part) for part in plan] == [6, 6, 6, 6]
    assert sorted(r for part in plan for r in part.tolist()) == list(range(24))
    parts_of = {g: {k for k, part in enumerate(plan) if g in {GROUPS[r] for r in part.tolist()}} for g in GROUPS}
    assert any(len(parts) > 1 for parts in parts_of.values())  # some group is split


def test_one_mini_batch_is_the_whole_step():
    (part,) = step_mini_batches(GROUPS, 1, 1, False, seed=0, step=0)
    assert sorted(part.tolist()) == list(range(24))


def test_a_step_with_too_few_groups_for_every_rank_takes_fewer_updates():
    # 3 groups of 2 (a partial asynchronous take), 4 ranks: each mini-batch needs >= 4 rows.
    plan = step_mini_batches(["a", "a", "b", "b", "c", "c"], mini_batches=3, epochs=1, split_groups=False,
                             seed=0, step=0, min_rows=4)
    assert len(plan) == 1 and sorted(plan[0].tolist()) == list(range(6))


@pytest.mark.parametrize("changes,match", [
    (dict(learner__mini_batches=0), "learner.mini_batches: must be >= 1"),
    (dict(learner__epochs=0), "learner.epochs: must be >= 1"),
    (dict(learner__mini_batches=5), "learner.mini_batches: 5 mini-batches of a step's 4 groups "
                                    r"\(rollout.prompts_per_step 4\) leave some empty; learner.split_groups=true"),
    (dict(learner__mini_batches=4, learner__world_size=4, algo__group_size=2),
     "learner.mini_batches: the smallest of 4 mini-batches holds 2 samples, fewer than learner.world_size=4"),
])
def test_config_names_a_bad_split(changes, match):
    cfg = Config()
    cfg.rollout.prompts_per_step = 4
    for dotted, value in changes.items():
        group, key = dotted.split("__")
        setattr(getattr(cfg, group), key, value)
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_split_groups_allows_more_mini_batches_than_groups():
    cfg = Config()
    cfg.rollout.prompts_per_step, cfg.algo.group_size = 2, 4
    cfg.learner.mini_batches, cfg.learner.split_groups = 8, True
    validate(cfg)

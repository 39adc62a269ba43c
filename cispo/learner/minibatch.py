"""A step's samples split into mini-batches: several optimizer updates per rollout batch.

With K mini-batches and E epochs a step takes K x E updates, in order; every update after
the first trains on samples drawn by a policy the learner has already moved away from,
the off-policy regime where CISPO's clipped IS weight differs from PPO-style clipping.

Group-aware by default: a group's samples stay in one mini-batch, so each update sees
whole groups, whose advantages are centred within the group. The shuffle is seeded by
(trainer.seed, step, epoch) only, so a resumed job takes exactly the updates it would have.
"""

from __future__ import annotations

import random

import torch


def step_mini_batches(group_ids: list[str], mini_batches: int, epochs: int, split_groups: bool,
                      seed: int, step: int, min_rows: int = 1) -> list[torch.Tensor]:
    """Row indices of each update of step `step`, in order: `epochs` passes, each a fresh shuffle
    of the rows (row i belongs to group `group_ids[i]`) cut into `mini_batches` parts.

    Each part holds at least `min_rows` rows (one per learner rank). A step with too few groups for
    that (an asynchronous partial take) is cut into fewer parts: the caller logs how many."""
    units = _units(group_ids, split_groups)
    k = mini_batches
    while k > 1 and min(sum(len(u) for u in part) for part in _cut(units, k)) < min_rows:
        k -= 1
    plan = []
    for epoch in range(epochs):
        shuffled = list(units)
        # A string seed is hashed with SHA-512: the same on every run and Python version.
        random.Random(f"{seed}/{step}/{epoch}").shuffle(shuffled)
        plan += [torch.tensor([row for unit in part for row in unit], dtype=torch.long) for part in _cut(shuffled, k)]
    return plan


def _units(group_ids: list[str], split_groups: bool) -> list[list[int]]:
    """What the shuffle moves as one: each row, or each group's rows (groups in order of first row)."""
    if split_groups:
        return [[i] for i in range(len(group_ids))]
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    return list(groups.values())


def _cut(units: list[list[int]], k: int) -> list[list[list[int]]]:
    """`k` consecutive parts whose unit counts differ by at most one."""
    size, extra = divmod(len(units), k)
    bounds = [0]
    for i in range(k):
        bounds.append(bounds[-1] + size + (i < extra))
    return [units[a:b] for a, b in zip(bounds, bounds[1:])]

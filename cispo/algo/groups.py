"""What every driver does to a step's scored groups before the learner sees them:
DAPO's overlong shaping, masking truncated responses, and the advantages."""

from __future__ import annotations

import statistics

import torch

from cispo.algo.advantages import compute_advantages
from cispo.algo.controls import overlong_penalty, truncation_mask
from cispo.config import AlgoConfig
from cispo.types import Group


def assign_advantages(groups: list[Group], estimator: str, rewards: list[list[float]] | None = None) -> None:
    """Set every sample's advantage; `rewards` (per group, per sample) default to the groups' own."""
    table = torch.tensor(rewards or [g.rewards for g in groups], dtype=torch.float64)  # (N, G), NaN = failed
    adv = compute_advantages(estimator, table)
    for g, row in zip(groups, adv.tolist()):
        for s, a in zip(g.samples, row):
            s.advantage = a


def prepare_groups(groups: list[Group], a: AlgoConfig, cap: int) -> dict[str, float]:
    """Shape, mask and set advantages of a step's scored groups (`cap`: the response cap now); its metrics.

    1. DAPO overlong shaping (algo.overlong_buffer > 0): the advantages see the task reward
       plus `overlong_penalty` of the response length against the current cap;
       `sample.reward` keeps the task's score, so reward/* metrics stay comparable.
    2. algo.mask_truncated: responses cut at the cap get an all-zero loss mask (they still
       count in their group's baseline, as in DAPO's overlong filtering).
    3. Advantages by algo.advantage.
    """
    # A truncated response sits at the cap it was sampled with, which the curriculum may have
    # raised since (async): it gets the full penalty, as it would have then.
    penalties = [[overlong_penalty(cap if s.finish_reason == "length" else len(s.response_ids), max_len=cap,
                                   buffer=a.overlong_buffer, factor=a.overlong_penalty) if a.overlong_buffer else 0.0
                  for s in g.samples]
                 for g in groups]
    assign_advantages(groups, a.advantage, [[r + p for r, p in zip(g.rewards, ps)] for g, ps in zip(groups, penalties)])
    samples = [s for g in groups for s in g.samples]
    masked = 0
    for s, weight in zip(samples, truncation_mask([s.finish_reason for s in samples], mask_truncated=a.mask_truncated)):
        if weight == 0.0:
            s.loss_mask = [0] * len(s.loss_mask)
            masked += 1
    flat = [p for ps in penalties for p in ps]
    return {"reward/overlong_penalty_mean": statistics.fmean(flat) if flat else 0.0,
            "reward/overlong_penalized_frac": sum(p < 0 for p in flat) / max(len(flat), 1),
            "rollout/truncated_masked": float(masked)}

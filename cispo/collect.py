"""From prompts to scored, grouped samples with advantages: what a rollout step produces."""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass, field

import torch

from cispo.advantages import compute_advantages
from cispo.config import Config
from cispo.controls import has_signal, overlong_penalty, truncation_mask
from cispo.types import Completion, Group, Sample, SamplingParams


@dataclass
class Rollouts:
    groups: list[Group]
    generate_s: float = 0.0
    reward_s: float = 0.0
    dropped_groups: int = 0  # zero-variance groups dropped by dynamic sampling
    rounds: int = 1
    controls: dict[str, float] = field(default_factory=dict)  # what `prepare_groups` did: its metrics

    @property
    def samples(self) -> list[Sample]:
        return [s for g in self.groups for s in g.samples]


def sampling_params(cfg: Config, eos_id: int) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(n=cfg.algo.group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                          max_tokens=r.max_new_tokens, stop_token_ids=(eos_id,),
                          repetition_window=r.repetition_window, repetition_prob=r.repetition_prob)


def to_group(row, prompt_ids: list[int], completions: list[Completion], tokenizer) -> Group:
    group_id = uuid.uuid4().hex[:12]
    samples = [
        Sample(sample_id=f"{group_id}-{k}", group_id=group_id, prompt_ids=prompt_ids,
               response_ids=c.token_ids, behaviour_logprobs=c.logprobs, finish_reason=c.finish_reason,
               policy_version=c.policy_version, prompt_text=row.prompt,
               response_text=tokenizer.decode(c.token_ids, skip_special_tokens=True), metadata=row.metadata)
        for k, c in enumerate(completions)
    ]
    return Group(group_id, samples)


def assign_advantages(groups: list[Group], estimator: str, rewards: list[list[float]] | None = None) -> None:
    """Set every sample's advantage; `rewards` (per group, per sample) default to the groups' own."""
    table = torch.tensor(rewards or [g.rewards for g in groups], dtype=torch.float64)  # (N, G), NaN = failed
    adv = compute_advantages(estimator, table)
    for g, row in zip(groups, adv.tolist()):
        for s, a in zip(g.samples, row):
            s.advantage = a


def prepare_groups(groups: list[Group], cfg: Config) -> dict[str, float]:
    """What every driver does to a step's scored groups before batching them; returns its metrics.

    1. DAPO overlong shaping (algo.overlong_buffer > 0): the advantages see the task reward
       plus `overlong_penalty` of the response length against the current cap;
       `sample.reward` keeps the task's score, so reward/* metrics stay comparable.
    2. algo.mask_truncated: responses cut at the cap get an all-zero loss mask (they still
       count in their group's baseline, as in DAPO's overlong filtering).
    3. Advantages by algo.advantage.
    """
    a, cap = cfg.algo, cfg.rollout.max_new_tokens
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


def collect(cfg: Config, rows_for_round, rollout, rewards, tokenizer) -> Rollouts:
    """Generate, score and group; with dynamic sampling, refill dropped groups for a few rounds.

    `rows_for_round(n)` hands out the next n task rows (so the data position advances
    exactly by the prompts used).
    """
    params = sampling_params(cfg, tokenizer.eos_token_id)
    want = cfg.rollout.prompts_per_step
    out = Rollouts(groups=[], rounds=0)
    while len(out.groups) < want and out.rounds < max(1, cfg.algo.dynamic_sampling_max_rounds):
        out.rounds += 1
        rows = rows_for_round(want - len(out.groups))
        prompt_ids = [tokenizer(r.prompt).input_ids for r in rows]
        t0 = time.perf_counter()
        completions = rollout.generate(prompt_ids, params)
        out.generate_s += time.perf_counter() - t0
        groups = [to_group(r, p, c, tokenizer) for r, p, c in zip(rows, prompt_ids, completions)]
        stats = rewards.score([s for g in groups for s in g.samples])
        out.reward_s += stats.seconds
        if not cfg.algo.dynamic_sampling:
            out.groups += groups
            break
        kept = [g for g in groups if has_signal(g.rewards)]
        out.dropped_groups += len(groups) - len(kept)
        out.groups += kept
    if not out.groups:
        raise RuntimeError(
            f"dynamic sampling kept no group in {out.rounds} rounds: every group's rewards were equal. "
            "Raise algo.dynamic_sampling_max_rounds or turn algo.dynamic_sampling off.")
    out.controls = prepare_groups(out.groups, cfg)
    return out

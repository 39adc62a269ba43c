"""From prompts to scored, grouped samples with advantages: what a rollout step produces."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import torch

from cispo.advantages import compute_advantages
from cispo.config import Config
from cispo.controls import has_signal
from cispo.types import Completion, Group, Sample, SamplingParams


@dataclass
class Rollouts:
    groups: list[Group]
    generate_s: float = 0.0
    reward_s: float = 0.0
    dropped_groups: int = 0  # zero-variance groups dropped by dynamic sampling
    rounds: int = 1

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


def assign_advantages(groups: list[Group], estimator: str) -> None:
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float64)  # (N, G), NaN = failed
    adv = compute_advantages(estimator, rewards)
    for g, row in zip(groups, adv.tolist()):
        for s, a in zip(g.samples, row):
            s.advantage = a


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
    assign_advantages(out.groups, cfg.algo.advantage)
    return out

"""One RL step's learner updates from its samples: the batch, the pi_old its loss uses, the
rollout correction, the mini-batches, the optimizer steps.

Both drivers (`train.py`, `train_async.py`) call `learner_update`, so every algo option
acts the same in both.
"""

from __future__ import annotations

import math

import torch

from cispo.algo.corrections import resolve_correction, rollout_correction
from cispo.algo.diagnostics import mismatch_stats, mismatch_sums
from cispo.config import Config
from cispo.learner.batch import make_batch
from cispo.learner.group import LearnerGroup
from cispo.learner.minibatch import step_mini_batches
from cispo.learner.routing import routing_metrics
from cispo.types import Sample


def learner_update(learner: LearnerGroup, samples: list[Sample], cfg: Config, pad_id: int,
                   step: int) -> dict[str, float]:
    """Pack the samples, choose pi_old (algo.old_logp), apply the rollout correction (algo.correction),
    take the step's learner.mini_batches x learner.epochs optimizer updates (with the sampler's experts
    when algo.routing_replay); the learner's metrics (learner/..., with the sampler-vs-learner
    mismatch; moe/... for the MoE model, `cispo.learner.routing`).

    "rollout": pi_old is the sampler's log-probs, so the IS ratio corrects both the lag of
    an older policy version and any sampler/learner numerical gap. "recompute": one extra
    no-grad forward of the learner's current weights gives pi_old (verl's recompute), so the
    ratio sees only the learner's own arithmetic and its updates within the step; the
    sampler's log-probs stay in the batch for the mismatch metrics and the correction.
    """
    a, lc = cfg.algo, cfg.learner
    batch = make_batch(samples, pad_id, replay_routing=a.routing_replay)
    out: dict[str, float] = {}
    mismatch = None
    if a.old_logp == "recompute":
        learner_logp = learner.logprobs(batch)
        # Every token under the weights the sampler had (synchronously): the whole batch's mismatch.
        mismatch = mismatch_sums(batch.sampler_logp, learner_logp, batch.loss_mask)
        batch = batch.with_old_logp(learner_logp)
    correction = resolve_correction(a)
    if correction is not None:
        weights, keep, metrics = rollout_correction(correction, batch.old_logp, batch.sampler_logp, batch.loss_mask)
        batch = batch.with_correction(weights, keep)
        out.update({f"learner/correction_{k}": v for k, v in metrics.items()})
    plan = step_mini_batches([s.group_id for s in samples], lc.mini_batches, lc.epochs, lc.split_groups,
                             cfg.trainer.seed, step, min_rows=lc.world_size)
    merged = learner.train_step(batch, plan)
    if "moe_load_sums" in merged:  # the hybrid MoE model
        out.update(routing_metrics(merged.pop("moe_load_sums"), merged.pop("moe_agreement_sums")))
    out.update({f"learner/{k}": v for k, v in merged.items() if k not in ("mismatch_sums", "is_sums")})
    out["learner/tokens"] = float(batch.loss_mask.sum())  # the step's trained tokens, whatever the epochs
    out.update(update_metrics(torch.tensor(merged["is_sums"], dtype=torch.float64)))
    # Without a recompute: the first update's tokens, under the weights before the step's first update.
    if mismatch is None:
        mismatch = torch.tensor(merged["mismatch_sums"], dtype=torch.float64)
    stats = mismatch_stats(mismatch)
    out["learner/prob_corr"] = stats["prob_corr"]
    out["learner/prob_abs_diff"] = stats["prob_abs_diff_mean"]
    return out


def update_metrics(is_sums: torch.Tensor) -> dict[str, float]:
    """The step's updates and how far off-policy they were, from per-update (n, Σr, Σr², Σ|r-1|) of
    r = π_θ / π_old over trained tokens, [U, 4]:

        learner/updates              U, optimizer steps this RL step
        learner/is_weight_std        std of r over every update's tokens
        learner/is_weight_dev_first  mean |r - 1| in the first update: the sampler/learner gap
                                     (0 with old_logp=recompute), plus the lag of stale samples
        learner/is_weight_dev_later  mean |r - 1| over the later updates (U > 1 only): how far the
                                     updates already taken moved the policy from π_old
    """
    n, s, ss, _ = is_sums.sum(0).tolist()
    out = {"learner/updates": float(len(is_sums)),
           "learner/is_weight_std": math.sqrt(max(ss / n - (s / n) ** 2, 0.0)) if n else math.nan,
           "learner/is_weight_dev_first": _dev(is_sums[0])}
    if len(is_sums) > 1:
        out["learner/is_weight_dev_later"] = _dev(is_sums[1:].sum(0))
    return out


def _dev(sums: torch.Tensor) -> float:
    n, dev = float(sums[0]), float(sums[3])
    return dev / n if n else math.nan

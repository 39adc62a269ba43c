"""One learner update from a step's samples: the batch, the pi_old its loss uses, the step.

Both drivers (`train.py`, `train_async.py`) call `learner_update`, so every algo option
acts the same in both.
"""

from __future__ import annotations

import torch

from cispo.algo.diagnostics import mismatch_stats
from cispo.learner.batch import make_batch
from cispo.learner.group import LearnerGroup
from cispo.types import Sample


def learner_update(learner: LearnerGroup, samples: list[Sample], old_logp: str, pad_id: int) -> dict[str, float]:
    """Pack the samples, choose pi_old (`old_logp`: algo.old_logp), take one learner step; the learner's
    metrics (learner/..., with the sampler-vs-learner mismatch).

    "rollout": pi_old is the sampler's log-probs, so the IS ratio corrects both the lag of
    an older policy version and any sampler/learner numerical gap. "recompute": one extra
    no-grad forward of the learner's current weights gives pi_old (verl's recompute), so the
    ratio sees only the learner's own arithmetic; the sampler's log-probs stay in the batch
    for the mismatch metrics.
    """
    batch = make_batch(samples, pad_id)
    if old_logp == "recompute":
        batch = batch.with_old_logp(learner.logprobs(batch))
    merged = learner.train_step(batch)
    out = {f"learner/{k}": v for k, v in merged.items() if k != "mismatch_sums"}
    stats = mismatch_stats(torch.tensor(merged["mismatch_sums"], dtype=torch.float64))
    out["learner/prob_corr"] = stats["prob_corr"]
    out["learner/prob_abs_diff"] = stats["prob_abs_diff_mean"]
    return out

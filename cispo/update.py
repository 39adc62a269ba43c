"""One learner update from a step's samples: the batch, the pi_old its loss uses, the step.

Both drivers (`train.py`, `train_async.py`) call `learner_update`, so every algo option
acts the same in both.
"""

from __future__ import annotations

from cispo.batch import make_batch
from cispo.config import Config
from cispo.learner_group import LearnerGroup
from cispo.types import Sample


def loss_params(cfg: Config) -> dict:
    a = cfg.algo
    params = dict(eps_low_is=a.eps_low_is, eps_high_is=a.eps_high_is, clip_low=a.clip_low,
                  clip_high=a.clip_high, loss_agg=a.loss_agg, max_tokens=cfg.rollout.max_new_tokens)
    return {k: v for k, v in params.items() if v is not None}  # None: the loss's own default


def learner_update(learner: LearnerGroup, samples: list[Sample], cfg: Config, pad_id: int) -> dict[str, float]:
    """Pack the samples, choose pi_old (algo.old_logp), take one learner step; the learner's metrics.

    "rollout": pi_old is the sampler's log-probs, so the IS ratio corrects both the lag of
    an older policy version and any sampler/learner numerical gap. "recompute": one extra
    no-grad forward of the learner's current weights gives pi_old (verl's recompute), so the
    ratio sees only the learner's own arithmetic; the sampler's log-probs stay in the batch
    for the mismatch metrics.
    """
    batch = make_batch(samples, pad_id)
    if cfg.algo.old_logp == "recompute":
        batch = batch.with_old_logp(learner.logprobs(batch))
    return learner.train_step(batch, loss_params(cfg))

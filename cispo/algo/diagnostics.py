"""Measurements that tell whether training is healthy, and how good the policy is.

- Train/inference mismatch: the sampler's and the learner's probabilities of the same
  tokens should agree. M1 found them correlated at only 0.987 until they ran the LM
  head in FP32 (0.997); a drop flags a precision or weight-sync bug. The statistics
  are built from sums, so data-parallel shards all-reduce seven numbers and get the
  exact full-batch values.
- pass@k, the unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

import math

import torch

def mismatch_sums(sampler_logp: torch.Tensor, learner_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sufficient statistics of the mismatch over trained tokens: [7] float64, summable.

    sampler_logp, learner_logp, mask: [B, T] (mask 1 on trained tokens). With
    x = exp(sampler_logp), y = exp(learner_logp) over trained tokens, returns
    (n, Σx, Σy, Σx², Σy², Σxy, Σ|x-y|). Probabilities, not log-probs: that is the
    space M1 reports, and it is bounded, so rare tokens with log-probs of -30 do not
    swamp the correlation.
    """
    if not (sampler_logp.shape == learner_logp.shape == mask.shape):
        raise ValueError(
            f"sampler_logp, learner_logp and mask must have one shape; got {tuple(sampler_logp.shape)}, "
            f"{tuple(learner_logp.shape)}, {tuple(mask.shape)}"
        )
    sel = mask > 0
    x = sampler_logp.detach()[sel].double().exp()
    y = learner_logp.detach()[sel].double().exp()
    n = torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)
    return torch.stack([n, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum(), (x - y).abs().sum()])


def mismatch_stats(sums: torch.Tensor) -> dict[str, float]:
    """Pearson correlation and mean |p_sampler - p_learner| from (all-reduced) `mismatch_sums`.

        corr = (n Σxy - Σx Σy) / sqrt((n Σx² - (Σx)²)(n Σy² - (Σy)²))

    Keys: prob_corr (nan when undefined: fewer than two tokens or constant
    probabilities), prob_abs_diff_mean (nan with no tokens), tokens.
    """
    n, sx, sy, sxx, syy, sxy, sad = (float(v) for v in sums.tolist())
    var_x = n * sxx - sx * sx
    var_y = n * syy - sy * sy
    corr = (n * sxy - sx * sy) / math.sqrt(var_x * var_y) if n >= 2 and var_x > 0 and var_y > 0 else math.nan
    return {
        "prob_corr": corr,
        "prob_abs_diff_mean": sad / n if n > 0 else math.nan,
        "tokens": n,
    }


def train_inference_mismatch(sampler_logp: torch.Tensor, learner_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """`mismatch_stats` of one (unsharded) batch; shapes as in `mismatch_sums`."""
    return mismatch_stats(mismatch_sums(sampler_logp, learner_logp, mask))


def mismatch_alarm(stats: dict[str, float], *, min_corr: float, max_abs_diff: float | None = None) -> str | None:
    """A message saying what is wrong when the mismatch crosses a threshold, else None.

    An undefined correlation (nan) does not alarm: it means too few or constant
    probabilities, not disagreement.
    """
    problems = []
    if stats["prob_corr"] < min_corr:
        problems.append(f"sampler/learner token-probability correlation {stats['prob_corr']:.4f} < {min_corr}")
    if max_abs_diff is not None and stats["prob_abs_diff_mean"] > max_abs_diff:
        problems.append(f"mean |p_sampler - p_learner| {stats['prob_abs_diff_mean']:.4g} > {max_abs_diff}")
    if not problems:
        return None
    return (
        "; ".join(problems)
        + f" over {int(stats['tokens'])} tokens: check the LM-head precision (M1 runs it in FP32) and the weight sync"
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, eq. 1) from n samples of which c are correct.

        pass@k = 1 - C(n - c, k) / C(n, k)

    The probability that a random k-subset of the n samples holds at least one correct
    one. Exact integer binomials (Python ints do not overflow), one division at the end.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)

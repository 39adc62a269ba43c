"""Outcome-reward advantage estimators, one per name, all with one signature.

    estimator(rewards, valid, *, eps, unbiased_std) -> advantages

    rewards     [N, G] float64  one scalar reward per sample, G samples per prompt (a group);
                                failed samples hold 0 here and False in `valid`
    valid       [N, G] bool     False for a failed sample (NaN reward)
    advantages  [N, G] float64  0 for failed samples and for groups with nothing to learn

`compute_advantages(name, rewards)` takes rewards with NaN for failures, applies the
estimator and the rules every estimator shares: a failed sample gets advantage 0 and
is left out of its group's statistics; a group whose valid rewards are all equal, or
that has fewer than two valid samples, gets 0 everywhere (no signal, and no baseline
to compare with); optional batch-level scaling.

Standard deviation: GRPO (DeepSeekMath eq. 3) and M1 (eq. 2) write std(R) without
saying which. verl (`torch.std`) and TRL's GRPOTrainer (`Tensor.std`) use the sample
std with Bessel's correction (divide by G-1), so that is the default here
(`unbiased_std=True`); pass False for the population std (divide by G). For binary
rewards in a group of G the two differ by the factor sqrt(G/(G-1)): 1.41 at G=2, 1.03
at G=16.
"""

from __future__ import annotations

from typing import Callable

import torch

AdvantageFn = Callable[..., torch.Tensor]

_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register an estimator under `name`; a name may be registered only once."""

    def decorator(fn: AdvantageFn) -> AdvantageFn:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered (by {_ESTIMATORS[name].__qualname__})")
        _ESTIMATORS[name] = fn
        return fn

    return decorator


def advantage_names() -> list[str]:
    """The registered estimator names, sorted."""
    return sorted(_ESTIMATORS)


def get_advantage(name: str) -> AdvantageFn:
    """The estimator registered as `name`."""
    if name not in _ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {', '.join(advantage_names())}")
    return _ESTIMATORS[name]


def compute_advantages(
    name: str,
    rewards: torch.Tensor,
    *,
    eps: float = 1e-6,
    unbiased_std: bool = True,
    batch_norm: bool = False,
) -> torch.Tensor:
    """Advantages [N, G] from rewards [N, G] (NaN = failed sample), by estimator `name`.

    batch_norm: divide every advantage by the std over all valid samples of the batch
    (plus eps), after the group estimator ("group mean, batch std" of Lite PPO, Liu et
    al. 2025; REINFORCE++-baseline's whitening). The mean is not subtracted: each
    estimator here already gives advantages that sum to zero within every group, so
    the batch mean is zero, and subtracting a float-noise mean would turn the exact
    zeros of no-signal groups into noise. The std uses `unbiased_std` as well.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N_groups, G]; got shape {tuple(rewards.shape)}")
    fn = get_advantage(name)
    r = rewards.detach().to(torch.float64)
    valid = ~torch.isnan(r)
    if torch.isinf(r).any():
        raise ValueError("rewards hold ±inf; a failed sample must be NaN, a score must be finite")
    r = torch.where(valid, r, torch.zeros_like(r))
    adv = fn(r, valid, eps=eps, unbiased_std=unbiased_std)
    adv = torch.where(valid & _has_signal(r, valid).unsqueeze(-1), adv, torch.zeros_like(adv))
    if batch_norm and valid.sum() >= 2:
        adv = adv / (adv[valid].std(unbiased=unbiased_std) + eps)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


@register_advantage("grpo")
def grpo_advantage(rewards: torch.Tensor, valid: torch.Tensor, *, eps: float, unbiased_std: bool) -> torch.Tensor:
    """Group-normalised (GRPO, DeepSeekMath eq. 3; M1 eq. 2): A_i = (R_i - mean_g R) / (std_g R + eps).

    mean and std over the group's valid samples; std per `unbiased_std` (module docstring).
    """
    n = valid.sum(-1, keepdim=True).to(rewards.dtype)  # [N, 1]
    mean = _group_mean(rewards, valid)
    sq = torch.where(valid, (rewards - mean) ** 2, torch.zeros_like(rewards)).sum(-1, keepdim=True)
    dof = (n - 1.0) if unbiased_std else n
    std = (sq / dof.clamp(min=1.0)).sqrt()
    return (rewards - mean) / (std + eps)


@register_advantage("drgrpo")
def drgrpo_advantage(rewards: torch.Tensor, valid: torch.Tensor, *, eps: float, unbiased_std: bool) -> torch.Tensor:
    """Mean-only (Dr.GRPO, Liu et al. 2025): A_i = R_i - mean_g R. Dividing by the group std
    over-weights near-solved and near-failed prompts; Dr.GRPO drops it. eps, unbiased_std unused."""
    return rewards - _group_mean(rewards, valid)


@register_advantage("rloo")
def rloo_advantage(rewards: torch.Tensor, valid: torch.Tensor, *, eps: float, unbiased_std: bool) -> torch.Tensor:
    """Leave-one-out (RLOO, Ahmadian et al. 2024): A_i = R_i - Σ_{j≠i} R_j / (n - 1), n valid
    samples in the group. Equals n/(n-1) · (R_i - mean); the baseline is independent of
    sample i, so the estimate is unbiased. eps, unbiased_std unused."""
    n = valid.sum(-1, keepdim=True).to(rewards.dtype)
    others = (rewards.sum(-1, keepdim=True) - rewards) / (n - 1.0).clamp(min=1.0)
    return rewards - others


def _group_mean(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of the valid rewards of each group: [N, G] → [N, 1] (rewards are 0 where invalid)."""
    return rewards.sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1).to(rewards.dtype)


def _has_signal(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[N] bool: the group has at least two valid samples whose rewards are not all equal.

    Exact comparison, the same rule as DAPO's dynamic-sampling filter in cispo.algo.controls,
    so a group the filter keeps always gets a nonzero advantage.
    """
    hi = torch.where(valid, rewards, torch.full_like(rewards, -torch.inf)).amax(-1)
    lo = torch.where(valid, rewards, torch.full_like(rewards, torch.inf)).amin(-1)
    return (valid.sum(-1) >= 2) & (hi > lo)

"""Rollout corrections: weight or reject each token's loss by how far the sampler was from the learner.

The sampler (vLLM, the built-in engine) and the learner run the same weights with different
kernels and precisions and, for a MoE, sometimes different experts: the tokens were drawn
from π_rollout, not from the learner's π_old. With π_old the learner's own log-probs
(`algo.old_logp=recompute`: one no-grad forward before the step's first update) a
correction uses the per-token ratio

    ρ_t = π_old(o_t) / π_rollout(o_t) = exp(old_logp_t - rollout_logp_t)

to weight the token's loss (truncated IS) or to reject tokens or whole sequences (masked
IS, IcePop), as verl's `rollout_correction` does in its decoupled mode; the loss keeps its
own ratio π_θ / π_old. A rejected token leaves the loss mask, so the loss's normaliser does
not count it either (verl; slime #657). With `old_logp=rollout`, π_old = π_rollout and ρ ≡ 1
(verl's bypass mode, where the loss's own ratio already corrects the gap): `cispo.config`
refuses a correction there rather than apply a silent no-op.

Every log-ratio is bounded to ±20 (verl's safety bound) before exp. i indexes sequences,
t trained tokens; ρ_i = Π_t ρ_t, g_i = exp(mean_t log ρ_t).

    name       weight on a kept token    kept where              default low, high
    tis_token  min(ρ_t, high)            always                  -, 2
    tis_seq    min(ρ_i, high)            always                  -, 2
    mis_token  ρ_t                       low ≤ ρ_t ≤ high        0, 2
    mis_seq    ρ_i                       low ≤ ρ_i ≤ high        0, 2
    mis_geo    1                         low ≤ g_i ≤ high        0.999, 1.001
    icepop     ρ_t                       low ≤ ρ_t ≤ high        0.5, 5

tis_*: truncated IS (verl `rollout_is=token|sequence`, threshold 2). mis_token / mis_seq:
masked IS, ρ·1[ρ ≤ C] with C = 2 (Liu, Li et al. 2025, "When Speed Kills Stability"; verl's
seq_mis). mis_geo: verl's geo_rs, a rejection only (a geometric mean is no IS weight), with
its tight band: 100 tokens at ρ = 1.01 have ρ_i = 2.7 but g_i = 1.01. icepop: IcePop (Ring-1T),
M(ρ) = ρ on [α, β] = [0.5, 5] and 0 outside: token masked IS with a two-sided band.

Metrics (the learner adds `learner/correction_`), over trained tokens before rejection:
masked_frac, truncated_frac (tokens whose weight was capped), weight_mean (over kept
tokens), and ratio_mean / _std / _min / _max of the ratio the correction judges (ρ_t per
token, ρ_i or g_i per sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

MAX_LOG_RATIO = 20.0


@dataclass(frozen=True)
class CorrectionSpec:
    """One correction, resolved: its name and bounds on the ratio (`low` unused by tis_*)."""

    name: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.name not in _CORRECTIONS:
            raise ValueError(f"unknown rollout correction {self.name!r}; known: none, {', '.join(correction_names())}")
        if not 0 <= self.low <= self.high:
            raise ValueError(f"correction bounds need 0 <= low <= high, got low={self.low}, high={self.high}")


# (log_rho [B, T], mask [B, T], spec) -> (weights [B, T], keep [B, T], the judged ratios [N])
CorrectionFn = Callable[[torch.Tensor, torch.Tensor, CorrectionSpec], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

_CORRECTIONS: dict[str, tuple[CorrectionFn, float, float]] = {}


def _register(name: str, low: float, high: float) -> Callable[[CorrectionFn], CorrectionFn]:
    def decorator(fn: CorrectionFn) -> CorrectionFn:
        if name in _CORRECTIONS:
            raise ValueError(f"rollout correction {name!r} is already registered")
        _CORRECTIONS[name] = (fn, low, high)
        return fn

    return decorator


def correction_names() -> list[str]:
    return sorted(_CORRECTIONS)


def correction_spec(name: str, low: float | None = None, high: float | None = None) -> CorrectionSpec | None:
    """The correction `name` with its default bounds overridden by those given; None for "none"."""
    if name == "none":
        return None
    if name not in _CORRECTIONS:
        raise ValueError(f"unknown rollout correction {name!r}; known: none, {', '.join(correction_names())}")
    _, default_low, default_high = _CORRECTIONS[name]
    return CorrectionSpec(name, default_low if low is None else low, default_high if high is None else high)


def resolve_correction(algo) -> CorrectionSpec | None:
    """The correction of an `algo` config section (`cispo.config.AlgoConfig`)."""
    return correction_spec(algo.correction, algo.correction_low, algo.correction_high)


def rollout_correction(spec: CorrectionSpec, old_logp: torch.Tensor, rollout_logp: torch.Tensor,
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-token loss weights [B, T] (1 off the mask), the keep mask [B, T] and the metrics.

    old_logp: π_old (the learner's recomputed log-probs), rollout_logp: the sampler's, mask: 1 on
    trained tokens; all [B, T]."""
    fn = _CORRECTIONS[spec.name][0]
    trained = mask > 0
    log_rho = torch.where(trained, old_logp - rollout_logp, torch.zeros_like(old_logp)).double()
    weights, keep, judged = fn(log_rho, trained, spec)
    weights = torch.where(trained, weights, torch.ones_like(weights)).float()
    keep = torch.where(trained, keep, torch.ones_like(keep)).float()
    return weights, keep, _metrics(weights, keep, trained, judged, spec)


@_register("tis_token", low=0.0, high=2.0)
def _tis_token(log_rho, trained, spec):
    rho = _bounded_exp(log_rho)
    return rho.clamp(max=spec.high), torch.ones_like(rho), rho[trained]


@_register("tis_seq", low=0.0, high=2.0)
def _tis_seq(log_rho, trained, spec):
    rho_seq = _bounded_exp(log_rho.sum(-1))  # [B]
    return rho_seq.clamp(max=spec.high)[:, None].expand_as(log_rho), torch.ones_like(log_rho), rho_seq[_has(trained)]


@_register("mis_token", low=0.0, high=2.0)
def _mis_token(log_rho, trained, spec):
    rho = _bounded_exp(log_rho)
    return rho, _inside(rho, spec), rho[trained]


_register("icepop", low=0.5, high=5.0)(_mis_token)


@_register("mis_seq", low=0.0, high=2.0)
def _mis_seq(log_rho, trained, spec):
    rho_seq = _bounded_exp(log_rho.sum(-1))  # [B]
    return (rho_seq[:, None].expand_as(log_rho), _inside(rho_seq, spec)[:, None].expand_as(log_rho),
            rho_seq[_has(trained)])


@_register("mis_geo", low=0.999, high=1.001)
def _mis_geo(log_rho, trained, spec):
    geo = _bounded_exp(log_rho.sum(-1) / trained.sum(-1).clamp(min=1))  # [B]
    return torch.ones_like(log_rho), _inside(geo, spec)[:, None].expand_as(log_rho), geo[_has(trained)]


def _bounded_exp(log_ratio: torch.Tensor) -> torch.Tensor:
    return log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()


def _inside(ratio: torch.Tensor, spec: CorrectionSpec) -> torch.Tensor:
    return ((ratio >= spec.low) & (ratio <= spec.high)).to(ratio.dtype)


def _has(trained: torch.Tensor) -> torch.Tensor:
    """[B] rows with at least one trained token."""
    return trained.any(-1)


def _metrics(weights, keep, trained, judged, spec) -> dict[str, float]:
    if not trained.any():
        return {k: math.nan for k in ("masked_frac", "truncated_frac", "weight_mean", "ratio_mean", "ratio_std",
                                      "ratio_min", "ratio_max")}
    kept = trained & (keep > 0)
    truncates = spec.name.startswith("tis_")  # weights are min(ratio, high)
    judged = judged.double()
    return {
        "masked_frac": 1.0 - float(kept.sum()) / float(trained.sum()),
        "truncated_frac": float((weights[trained] >= spec.high).double().mean()) if truncates else 0.0,
        "weight_mean": float(weights[kept].double().mean()) if kept.any() else math.nan,
        "ratio_mean": float(judged.mean()),
        "ratio_std": float(judged.std(unbiased=False)),
        "ratio_min": float(judged.min()),
        "ratio_max": float(judged.max()),
    }

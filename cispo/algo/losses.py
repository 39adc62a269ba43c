"""Policy losses: CISPO and the objectives it is compared with, in one registry.

Every loss has one signature and returns `(loss, metrics)`:

    loss_fn(logp, old_logp, advantages, mask, params) -> (scalar tensor, dict[str, float])

    logp        [B, T]  log π_θ(o_t | q, o_<t) of the sampled tokens, with grad
    old_logp    [B, T]  the same under the behaviour policy π_old (the engine that sampled)
    advantages  [B] or [B, T]  one value per sequence (broadcast over T) or per token
    mask        [B, T]  1 on trained response tokens, 0 on prompt / tool output / padding
    params      LossParams

`loss_spec(name, **params)` looks the loss up and fills `LossParams` from the
registration's defaults (the paper's recipe for that name) overridden by keyword
arguments: the frozen `LossSpec` the controller builds once from `algo.*` and the
learner applies.

Symbols below: r = exp(logp - old_logp) per token, sg = stop-gradient, N = number of
trained tokens, |o_i| = trained tokens of sequence i, B' = sequences with at least one.

Metrics (no prefix; the trainer adds `learner/`), all over trained tokens of this shard:
  is_weight_mean / _min / _max   the raw per-token ratio r (before any clip)
  clip_frac_high / clip_frac_low fraction of tokens clipped above / below. For the
                                 CISPO losses: the IS weight was capped (the token still
                                 gets gradient). For the clipped surrogates: the token's
                                 gradient was dropped (A>0, r>1+clip_high / A<0, r<1-clip_low).
  approx_kl                      k3 estimate of KL(π_old || π_θ): mean of (r - 1) - log r,
                                 unbiased and ≥ 0 per token for samples drawn from π_old.
  masked_frac                    cispo_masked only: fraction of tokens with M = 0.
  seq_ratio_mean / _min / _max   gspo only: the sequence-level ratios s_i.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

# |log r| is clamped here before exp: beyond it a ratio overflows float32 long before it
# means anything, and every clip in this file sits far inside e^±20.
MAX_LOG_RATIO = 20.0

TOKEN_AGGS = ("token_mean",)
SEQ_AGGS = ("seq_mean_token_mean", "seq_mean_token_sum_norm")


@dataclass(frozen=True)
class LossParams:
    """The knobs every loss accepts; each loss reads the ones its docstring names.

    Defaults come from the papers:
    - eps_low_is, eps_high_is: CISPO's IS-weight clip, r̂ = clamp(r, 1-eps_low_is,
      1+eps_high_is). M1 sets eps_low_is large (no lower bound) and does not publish
      eps_high_is; ScaleRL's clip(r, 0, 5) is the common choice: 1.0 and 4.0.
    - clip_low, clip_high: the PPO trust region [1-clip_low, 1+clip_high] (PPO 0.2/0.2,
      DAPO's clip-higher 0.2/0.28, GSPO 3e-4/4e-4 on its sequence ratio).
    - loss_agg: how per-token losses become a scalar (see `aggregate`); M1 uses token_mean.
    - normalizer: divide by this instead of the local count (tokens for token-level
      aggregations, sequences for sequence-level ones); a data-parallel learner passes
      the all-reduced `loss_normalizer` of the whole batch so shard losses sum exactly
      to the full-batch loss.
    - max_tokens: the constant of Dr.GRPO's seq_mean_token_sum_norm (the generation cap).
    """

    eps_low_is: float = 1.0
    eps_high_is: float = 4.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_agg: str = "token_mean"
    normalizer: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for key in ("eps_low_is", "eps_high_is", "clip_low", "clip_high"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"loss param {key} must be >= 0, got {getattr(self, key)}")
        if self.loss_agg not in TOKEN_AGGS + SEQ_AGGS:
            raise ValueError(
                f"loss param loss_agg={self.loss_agg!r} is unknown; expected one of "
                f"{', '.join(TOKEN_AGGS + SEQ_AGGS)}"
            )
        if self.loss_agg == "seq_mean_token_sum_norm" and not (self.max_tokens and self.max_tokens > 0):
            raise ValueError(
                f"loss_agg=seq_mean_token_sum_norm needs max_tokens > 0 (the generation cap), "
                f"got {self.max_tokens}"
            )
        if self.normalizer is not None and not self.normalizer > 0:
            raise ValueError(f"loss param normalizer must be > 0 when given, got {self.normalizer}")


LossFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, LossParams],
    tuple[torch.Tensor, dict[str, float]],
]

_LOSSES: dict[str, tuple[LossFn, dict[str, object]]] = {}
_PARAM_NAMES = frozenset(f.name for f in dataclasses.fields(LossParams))


def register_loss(name: str, **defaults: object) -> Callable[[LossFn], LossFn]:
    """Register `fn` as policy loss `name`, with `defaults` overriding `LossParams`'.

    The same function may be registered under several names with different defaults
    (ppo and grpo share the clipped surrogate); a name may be registered only once.
    """
    unknown = set(defaults) - _PARAM_NAMES
    if unknown:
        raise ValueError(f"loss {name!r}: unknown default(s) {sorted(unknown)}; known: {sorted(_PARAM_NAMES)}")

    def decorator(fn: LossFn) -> LossFn:
        if name in _LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered (by {_LOSSES[name][0].__qualname__})")
        LossParams(**defaults)  # fail at import time, not at the first training step
        _LOSSES[name] = (fn, dict(defaults))
        return fn

    return decorator


def loss_names() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(_LOSSES)


def get_loss(name: str) -> tuple[LossFn, dict[str, object]]:
    """The loss function registered as `name` and its default params."""
    if name not in _LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; known: {', '.join(loss_names())}")
    return _LOSSES[name]


@dataclass(frozen=True)
class LossSpec:
    """One loss, fully resolved: the registry name and its parameters (aggregation included).
    The controller resolves `algo.*` into one of these once; the learner only applies it."""

    name: str
    params: LossParams

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                 normalizer: float | None = None,
                 token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss on one (micro)batch: shapes as in the module docstring; `normalizer` as in `LossParams`.

        `token_weights` [B, T] > 0, constant: each token's loss ℓ_it is multiplied by w_it (a rollout
        correction, `cispo.algo.corrections`). It is applied as the advantage w_it · A_it: every loss
        here is positively homogeneous in its token's advantage, ℓ(w·A) = w·ℓ(A) for w > 0 (the clipped
        surrogates' max(-rA, -clip(r)A) included, and the sign of A that decides a clip is kept), so the
        value and gradient are w·ℓ's, for any loss, and the loss keeps its own ratio π_θ / π_old.
        """
        fn, _ = get_loss(self.name)
        logp, old_logp, advantages, mask = _check_inputs(logp, old_logp, advantages, mask)
        if token_weights is not None:
            if token_weights.shape != logp.shape:
                raise ValueError(f"token_weights must be [B, T] = {tuple(logp.shape)}; "
                                 f"got {tuple(token_weights.shape)}")
            advantages = advantages * token_weights.detach().to(logp.dtype)  # [B, T]
        params = self.params if normalizer is None else dataclasses.replace(self.params, normalizer=normalizer)
        return fn(logp, old_logp, advantages, mask, params)


def loss_spec(name: str, **params: object) -> LossSpec:
    """Loss `name` with its registered defaults, overridden by `params`.

    A param given as None keeps the loss's default, so a config can leave clip bounds
    or loss_agg null to mean "the published value for this loss".
    """
    _, defaults = get_loss(name)
    unknown = set(params) - _PARAM_NAMES
    if unknown:
        raise ValueError(f"loss {name!r}: unknown param(s) {sorted(unknown)}; known: {sorted(_PARAM_NAMES)}")
    return LossSpec(name, LossParams(**{**defaults, **{k: v for k, v in params.items() if v is not None}}))


def resolve_loss(algo, max_tokens: int) -> LossSpec:
    """The `LossSpec` of an `algo` config section (`cispo.config.AlgoConfig`): resolved once per job.
    `max_tokens`: the response cap (Dr.GRPO's constant)."""
    return loss_spec(algo.loss, eps_low_is=algo.eps_low_is, eps_high_is=algo.eps_high_is, clip_low=algo.clip_low,
                     clip_high=algo.clip_high, loss_agg=algo.loss_agg, max_tokens=max_tokens)


def compute_policy_loss(name: str, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, **params: object) -> tuple[torch.Tensor, dict[str, float]]:
    """`loss_spec(name, **params)` applied once: for a reference computation outside the learner."""
    normalizer = params.pop("normalizer", None)
    return loss_spec(name, **params)(logp, old_logp, advantages, mask, normalizer)


# --------------------------------------------------------------------------- aggregation


def loss_normalizer(mask: torch.Tensor, loss_agg: str) -> float:
    """This shard's count that `aggregate` divides by: the value to all-reduce.

    token_mean: N = Σ mask. Sequence-level aggregations: B' = rows with at least one
    trained token (an all-masked row, e.g. a failed sample, neither counts nor trains).
    """
    if loss_agg in TOKEN_AGGS:
        return float(mask.sum())
    if loss_agg in SEQ_AGGS:
        return float((mask.sum(-1) > 0).sum())
    raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {', '.join(TOKEN_AGGS + SEQ_AGGS)}")


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, params: LossParams) -> torch.Tensor:
    """Per-token losses [B, T] → scalar, by `params.loss_agg`. D = `normalizer` if given,
    else this shard's count (N trained tokens for token_mean, B' sequences otherwise).

    token_mean:               Σ_i Σ_t ℓ_it / D.  M1 eq. 4 and DAPO: every token weighs the
                              same, so a long response weighs more than a short one.
    seq_mean_token_mean:      Σ_i (Σ_t ℓ_it / |o_i|) / D.  GRPO's original: every sample
                              weighs the same, whatever its length.
    seq_mean_token_sum_norm:  Σ_i Σ_t ℓ_it / (max_tokens · D).  Dr.GRPO: one constant
                              per-token weight, so neither long nor short answers are
                              favoured by the normalisation.

    M1's 80K stage: the report says negative samples grew long much faster than
    positive ones, so under token_mean their tokens dominated the gradient, and it
    switched to "combined sample-level loss and token-level normalization". We read
    that as seq_mean_token_mean: the loss is taken per sample (each sample counts
    once) and normalised by that sample's own token count. The wording could also
    mean a blend of token_mean and seq_mean_token_mean; the report gives no formula.

    Shards of one batch, each given the global D, sum exactly to the full-batch loss
    (|o_i| is per sequence, so sequences must not be split across shards).
    """
    mask = mask.to(loss_mat.dtype)
    masked = torch.where(mask > 0, loss_mat * mask, torch.zeros_like(loss_mat))
    d = params.normalizer if params.normalizer is not None else max(loss_normalizer(mask, params.loss_agg), 1.0)
    if params.loss_agg == "token_mean":
        return masked.sum() / d
    if params.loss_agg == "seq_mean_token_mean":
        seq_len = mask.sum(-1).clamp(min=1.0)
        return (masked.sum(-1) / seq_len).sum() / d
    # seq_mean_token_sum_norm (LossParams validated the name)
    return masked.sum() / (params.max_tokens * d)


# --------------------------------------------------------------------------- losses


@register_loss("cispo")
def cispo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, p: LossParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO (MiniMax-M1 eq. 4-5): clip the IS weight, never drop a token's gradient.

        r̂_it = clamp(r_it, 1 - eps_low_is, 1 + eps_high_is)
        ℓ_it = -sg(r̂_it) · A_it · logp_it            aggregated by loss_agg (M1: token_mean)
        ∇ℓ_it = -r̂_it · A_it · ∇logp_it

    Reads eps_low_is, eps_high_is. Shapes: see the module docstring.
    """
    ratio, log_ratio = _ratio(logp, old_logp, mask)
    r_hat = ratio.clamp(1.0 - p.eps_low_is, 1.0 + p.eps_high_is).detach()
    loss = aggregate(-r_hat * advantages * logp, mask, p)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics["clip_frac_high"] = _masked_mean((ratio > 1.0 + p.eps_high_is).float(), mask)
    metrics["clip_frac_low"] = _masked_mean((ratio < 1.0 - p.eps_low_is).float(), mask)
    return loss, metrics


# M1 does not give clip bounds for its unified form; DAPO's clip-higher is the natural pair.
@register_loss("cispo_masked", clip_high=0.28)
def cispo_masked_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, p: LossParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO with PPO's token mask, the unified objective (MiniMax-M1 eq. 6-7).

        M_it = 0  if (A_it > 0 and r_it > 1 + clip_high) or (A_it < 0 and r_it < 1 - clip_low)
               1  otherwise
        ℓ_it = -M_it · sg(r̂_it) · A_it · logp_it,   r̂ as in `cispo_loss`

    M ≡ 1 is CISPO; with r̂ = r (eps_*_is large) the gradient is PPO's clipped-surrogate
    gradient, M·r·A·∇logp. Reads eps_low_is, eps_high_is, clip_low, clip_high.
    """
    ratio, log_ratio = _ratio(logp, old_logp, mask)
    r_hat = ratio.clamp(1.0 - p.eps_low_is, 1.0 + p.eps_high_is).detach()
    keep = _trust_region_mask(ratio, advantages, p).detach()
    loss = aggregate(-keep * r_hat * advantages * logp, mask, p)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics["clip_frac_high"] = _masked_mean((ratio > 1.0 + p.eps_high_is).float(), mask)
    metrics["clip_frac_low"] = _masked_mean((ratio < 1.0 - p.eps_low_is).float(), mask)
    metrics["masked_frac"] = _masked_mean(1.0 - keep, mask)
    return loss, metrics


def clipped_surrogate_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, p: LossParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017 eq. 7), asymmetric bounds as in DAPO.

        ℓ_it = max(-r_it · A_it, -clamp(r_it, 1 - clip_low, 1 + clip_high) · A_it)

    Registered as `ppo` (0.2/0.2, token_mean), `grpo` (0.2/0.2, seq_mean_token_mean:
    GRPO's 1/G Σ_i 1/|o_i| Σ_t, with no KL term, as M1 drops it) and `dapo`
    (clip-higher 0.2/0.28, token_mean). Reads clip_low, clip_high.
    """
    ratio, log_ratio = _ratio(logp, old_logp, mask)
    clipped = ratio.clamp(1.0 - p.clip_low, 1.0 + p.clip_high)
    loss = aggregate(torch.maximum(-ratio * advantages, -clipped * advantages), mask, p)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics.update(_dropped_fracs(ratio, advantages, mask, p))
    return loss, metrics


register_loss("ppo")(clipped_surrogate_loss)
register_loss("grpo", loss_agg="seq_mean_token_mean")(clipped_surrogate_loss)
register_loss("dapo", clip_high=0.28)(clipped_surrogate_loss)


@register_loss("gspo", clip_low=3e-4, clip_high=4e-4, loss_agg="seq_mean_token_mean")
def gspo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, p: LossParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO (Zheng et al. 2025): a clipped surrogate on the length-normalised sequence ratio.

        s_i  = exp( Σ_t m_it (logp_it - old_logp_it) / |o_i| )        (geometric mean of r)
        s_it = sg(s_i) · exp(logp_it - sg(logp_it))                   (= s_i, ∇s_it = s_i ∇logp_it)
        ℓ_it = max(-s_it · A_it, -clamp(s_it, 1 - clip_low, 1 + clip_high) · A_it)

    With a per-sequence advantage and seq_mean_token_mean (the default) this is GSPO's
    1/G Σ_i min(s_i A_i, clip(s_i) A_i) with its gradient s_i A_i / |o_i| Σ_t ∇logp_it
    (the GSPO-token form allows per-token A). Reads clip_low, clip_high.
    """
    ratio, log_ratio = _ratio(logp, old_logp, mask)
    m = mask.to(logp.dtype)
    seq_log_ratio = (log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # [B]
    seq_ratio = seq_log_ratio.exp()  # [B]
    lp = torch.where(mask > 0, logp, torch.zeros_like(logp))  # untrained tokens: no NaN from garbage
    token_seq_ratio = seq_ratio.detach().unsqueeze(-1) * torch.exp(lp - lp.detach())  # [B, T]
    clipped = token_seq_ratio.clamp(1.0 - p.clip_low, 1.0 + p.clip_high)
    loss = aggregate(torch.maximum(-token_seq_ratio * advantages, -clipped * advantages), mask, p)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics.update(_dropped_fracs(token_seq_ratio, advantages, mask, p))
    has_tokens = m.sum(-1) > 0
    seqs = seq_ratio.detach()[has_tokens].double()
    empty = seqs.numel() == 0
    metrics["seq_ratio_mean"] = math.nan if empty else seqs.mean().item()
    metrics["seq_ratio_min"] = math.nan if empty else seqs.min().item()
    metrics["seq_ratio_max"] = math.nan if empty else seqs.max().item()
    return loss, metrics


@register_loss("reinforce")
def reinforce_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, p: LossParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE with an unclipped, detached importance weight: the reference CISPO clips.

        ℓ_it = -sg(r_it) · A_it · logp_it,     ∇ℓ_it = -A_it · ∇r_it

    Detached rather than plain: the gradient is the exact off-policy policy gradient
    (that of -r·A), and on-policy (old_logp = logp, r = 1) it is plain REINFORCE,
    -A·∇logp. CISPO with eps_*_is large enough never to clip equals this. Reads no
    clip params.
    """
    ratio, log_ratio = _ratio(logp, old_logp, mask)
    loss = aggregate(-ratio.detach() * advantages * logp, mask, p)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics["clip_frac_high"] = 0.0
    metrics["clip_frac_low"] = 0.0
    return loss, metrics


# --------------------------------------------------------------------------- helpers


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy of softmax(logits) per position: [..., V] → [...], float32.

        H = logsumexp(z) - Σ_v softmax(z)_v · z_v

    Rows are processed `chunk_size` at a time so the float32 softmax temporaries stay
    chunk_size × V instead of B × T × V: under torch.no_grad (the metric) that bounds
    the extra memory. With grad, autograd keeps every chunk's softmax regardless.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
    out = []
    for chunk in flat.split(chunk_size):
        z = chunk.float()
        out.append(torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1))
    if not out:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(out).reshape(logits.shape[:-1])


def _check_inputs(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes; return old_logp and advantages detached, advantages as [B, T] or [B, 1]."""
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"logp, old_logp and mask must all be [B, T]; got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape == logp.shape[:1]:
        advantages = advantages.unsqueeze(-1)  # [B, 1], broadcast over T
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages must be [B] or [B, T] = {tuple(logp.shape)}; got {tuple(advantages.shape)}")
    return logp, old_logp.detach(), advantages.detach().to(logp.dtype), mask.to(logp.dtype)


def _ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r = exp(logp - old_logp) and its log, [B, T]; 0 log-ratio (r = 1) on untrained tokens,
    so garbage there (padding, tool output scored by no engine) cannot leak NaN into grads."""
    log_ratio = torch.where(mask > 0, logp - old_logp, torch.zeros_like(logp))
    log_ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return log_ratio.exp(), log_ratio


def _trust_region_mask(ratio: torch.Tensor, advantages: torch.Tensor, p: LossParams) -> torch.Tensor:
    """1 where PPO keeps the token's gradient, 0 where its clip zeroes it: [B, T]."""
    above = (advantages > 0) & (ratio > 1.0 + p.clip_high)
    below = (advantages < 0) & (ratio < 1.0 - p.clip_low)
    return (~(above | below)).to(ratio.dtype)


def _dropped_fracs(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, p: LossParams) -> dict[str, float]:
    """Fractions of trained tokens whose gradient a PPO-style clip dropped, above and below."""
    above = ((advantages > 0) & (ratio > 1.0 + p.clip_high)).float()
    below = ((advantages < 0) & (ratio < 1.0 - p.clip_low)).float()
    return {"clip_frac_high": _masked_mean(above, mask), "clip_frac_low": _masked_mean(below, mask)}


def _ratio_metrics(ratio: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """IS-weight mean/min/max and the k3 KL(π_old || π_θ) estimate over trained tokens."""
    with torch.no_grad():
        sel = mask > 0
        r = ratio.detach()[sel].double()
        if r.numel() == 0:
            return {k: math.nan for k in ("is_weight_mean", "is_weight_min", "is_weight_max", "approx_kl")}
        k3 = (r - 1.0) - log_ratio.detach()[sel].double()
        return {
            "is_weight_mean": r.mean().item(),
            "is_weight_min": r.min().item(),
            "is_weight_max": r.max().item(),
            "approx_kl": k3.mean().item(),
        }


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of `values` over trained tokens as a Python float; nan when there are none."""
    with torch.no_grad():
        values = values.detach().expand_as(mask)
        sel = mask > 0
        return values[sel].double().mean().item() if sel.any() else math.nan

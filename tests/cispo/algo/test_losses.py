"""Policy losses against straightforward references written out token by token.

The references below loop over (i, t) and use Python floats for every stop-gradient
factor, so they share no code with cispo.algo.losses; autograd then gives their gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

from cispo.algo import losses
from cispo.algo.losses import compute_policy_loss, entropy_from_logits, loss_names, loss_normalizer

AGGS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
MAX_TOKENS = 8
# Tight clips so that every branch (clipped above, below, inside) is hit by the data.
PARAMS = dict(eps_low_is=0.3, eps_high_is=0.2, clip_low=0.2, clip_high=0.25, max_tokens=MAX_TOKENS)


def make_batch(seed: int = 0, per_token_adv: bool = False):
    """B=4, T=6; row 3 has a single trained token, row 2 a masked hole in the middle."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    old_logp = logp + torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.5
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float64
    )
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64) if per_token_adv else torch.tensor(
        [1.3, -0.7, 0.4, -1.1], dtype=torch.float64
    )
    return logp.requires_grad_(), old_logp, adv, mask


def adv_at(adv, i, t):
    return float(adv[i, t]) if adv.dim() == 2 else float(adv[i])


def agg_weight(mask, agg, i, t):
    """The weight token (i, t) gets in the scalar loss, by the aggregation's formula."""
    n_tokens = sum(float(mask[a, b]) for a in range(mask.shape[0]) for b in range(mask.shape[1]))
    n_seqs = sum(1 for a in range(mask.shape[0]) if float(mask[a].sum()) > 0)
    seq_len = float(mask[i].sum())
    if agg == "token_mean":
        return 1.0 / n_tokens
    if agg == "seq_mean_token_mean":
        return 1.0 / (seq_len * n_seqs)
    return 1.0 / (MAX_TOKENS * n_seqs)


def clip(x, lo, hi):
    return min(max(x, lo), hi)


def reference_loss(name, logp, old_logp, adv, mask, agg, p, w=None):
    """Σ_{i,t trained} weight_it · w_it · ℓ_it, with ℓ written from the papers' formulas and w an
    optional per-token factor (a rollout correction's weight; 1 when None)."""
    total = logp.new_zeros(())

    def w_at(i, t):
        return 1.0 if w is None else float(w[i, t])

    b, t_len = logp.shape
    if name == "gspo":
        # Sequence-level objective: L_i = max(-s_i A_i, -clip(s_i) A_i), s_i the geometric
        # mean ratio. Its token form spreads L_i over the sequence's tokens.
        for i in range(b):
            toks = [t for t in range(t_len) if mask[i, t] > 0]
            s = torch.exp(sum(logp[i, t] - old_logp[i, t] for t in toks) / len(toks))
            a = float(adv[i])
            seq_loss = torch.maximum(-s * a, -s.clamp(1 - p["clip_low"], 1 + p["clip_high"]) * a)
            # Σ_t weight_it · ℓ_it with ℓ_it = L_i in value and ∇ℓ_it = |o_i| ∂L_i/∂logp_it.
            total = total + seq_loss * sum(agg_weight(mask, agg, i, t) * w_at(i, t) for t in toks)
        return total
    for i in range(b):
        for t in range(t_len):
            if mask[i, t] == 0:
                continue
            a = adv_at(adv, i, t)
            r_val = math.exp(float(logp[i, t].detach()) - float(old_logp[i, t]))
            if name in ("cispo", "cispo_masked"):
                w_is = clip(r_val, 1 - p["eps_low_is"], 1 + p["eps_high_is"])
                keep = 1.0
                if name == "cispo_masked" and (
                    (a > 0 and r_val > 1 + p["clip_high"]) or (a < 0 and r_val < 1 - p["clip_low"])
                ):
                    keep = 0.0
                tok = -keep * w_is * a * logp[i, t]
            elif name in ("ppo", "grpo", "dapo"):
                r = torch.exp(logp[i, t] - old_logp[i, t])
                tok = torch.maximum(-r * a, -r.clamp(1 - p["clip_low"], 1 + p["clip_high"]) * a)
            elif name == "reinforce":
                tok = -r_val * a * logp[i, t]
            else:
                raise AssertionError(name)
            total = total + agg_weight(mask, agg, i, t) * w_at(i, t) * tok
    return total


def grad_of(loss, logp):
    (g,) = torch.autograd.grad(loss, logp)
    return g


# GSPO's sequence objective is defined for one advantage per sequence only.
CASES = [
    (name, per_token)
    for name in ("cispo", "cispo_masked", "ppo", "grpo", "dapo", "gspo", "reinforce")
    for per_token in (False, True)
    if not (name == "gspo" and per_token)
]


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize(("name", "per_token_adv"), CASES)
def test_value_and_gradient_match_reference(name, agg, per_token_adv):
    logp, old_logp, adv, mask = make_batch(seed=2, per_token_adv=per_token_adv)
    loss, metrics = compute_policy_loss(name, logp, old_logp, adv, mask, loss_agg=agg, **PARAMS)
    ref = reference_loss(name, logp, old_logp, adv, mask, agg, PARAMS)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_of(loss, logp), grad_of(ref, logp), rtol=1e-10, atol=1e-12)
    assert all(isinstance(v, float) for v in metrics.values())


# GSPO's reference is its sequence objective: a weight may vary between sequences only.
WEIGHTED = [(name, per_seq) for name in loss_names() for per_seq in (False, True) if per_seq or name != "gspo"]


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize(("name", "per_sequence"), WEIGHTED)
def test_token_weights_multiply_each_tokens_loss(name, per_sequence, agg):
    """A rollout correction's weights scale every token's loss (value and gradient), for any loss."""
    logp, old_logp, adv, mask = make_batch(seed=2)
    g = torch.Generator().manual_seed(9)
    w = torch.rand(4, 1 if per_sequence else 6, generator=g, dtype=torch.float64).expand(4, 6) * 2 + 0.05
    loss, _ = losses.loss_spec(name, loss_agg=agg, **PARAMS)(logp, old_logp, adv, mask, token_weights=w)
    ref = reference_loss(name, logp, old_logp, adv, mask, agg, PARAMS, w=w)
    unweighted = reference_loss(name, logp, old_logp, adv, mask, agg, PARAMS)
    assert not torch.isclose(ref, unweighted)  # the weights matter on this data
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_of(loss, logp), grad_of(ref, logp), rtol=1e-10, atol=1e-12)


def test_every_registered_loss_is_covered_by_the_reference_test():
    assert loss_names() == sorted(["cispo", "cispo_masked", "ppo", "grpo", "dapo", "gspo", "reinforce"])


@pytest.mark.parametrize("per_token_adv", [False, True])
def test_reference_data_exercise_every_clip_branch(per_token_adv):
    logp, old_logp, adv, mask = make_batch(seed=2, per_token_adv=per_token_adv)
    _, m = compute_policy_loss("cispo", logp, old_logp, adv, mask, **PARAMS)
    assert m["clip_frac_high"] > 0 and m["clip_frac_low"] > 0 and m["clip_frac_high"] + m["clip_frac_low"] < 1
    _, m = compute_policy_loss("ppo", logp, old_logp, adv, mask, **PARAMS)
    assert m["clip_frac_high"] > 0 and m["clip_frac_low"] > 0


def test_cispo_gradient_is_clipped_weight_times_advantage_over_token_count():
    logp, old_logp, adv, mask = make_batch(seed=2, per_token_adv=True)
    loss, _ = compute_policy_loss("cispo", logp, old_logp, adv, mask, **PARAMS)
    r_hat = torch.exp(logp.detach() - old_logp).clamp(1 - PARAMS["eps_low_is"], 1 + PARAMS["eps_high_is"])
    expected = -r_hat * adv * mask / mask.sum()
    torch.testing.assert_close(grad_of(loss, logp), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("agg", AGGS)
def test_cispo_without_clipping_equals_reinforce(agg):
    logp, old_logp, adv, mask = make_batch(seed=3)
    huge = dict(eps_low_is=1e9, eps_high_is=1e9, loss_agg=agg, max_tokens=MAX_TOKENS)
    cispo, _ = compute_policy_loss("cispo", logp, old_logp, adv, mask, **huge)
    reinforce, _ = compute_policy_loss("reinforce", logp, old_logp, adv, mask, loss_agg=agg, max_tokens=MAX_TOKENS)
    torch.testing.assert_close(cispo, reinforce)
    torch.testing.assert_close(grad_of(cispo, logp), grad_of(reinforce, logp))


def test_reinforce_on_policy_is_plain_reinforce():
    logp, _, adv, mask = make_batch(seed=3)
    loss, m = compute_policy_loss("reinforce", logp, logp.detach(), adv, mask)
    torch.testing.assert_close(loss, -(adv[:, None] * logp * mask).sum() / mask.sum())
    assert m["is_weight_mean"] == 1.0 and m["approx_kl"] == 0.0


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_cispo_masked_with_unclipped_weight_has_ppo_gradient(agg, per_token_adv):
    logp, old_logp, adv, mask = make_batch(seed=4, per_token_adv=per_token_adv)
    common = dict(clip_low=0.2, clip_high=0.25, loss_agg=agg, max_tokens=MAX_TOKENS)
    masked, m = compute_policy_loss("cispo_masked", logp, old_logp, adv, mask, eps_low_is=1e9, eps_high_is=1e9, **common)
    ppo, m_ppo = compute_policy_loss("ppo", logp, old_logp, adv, mask, **common)
    torch.testing.assert_close(grad_of(masked, logp), grad_of(ppo, logp))
    assert m["masked_frac"] == pytest.approx(m_ppo["clip_frac_high"] + m_ppo["clip_frac_low"]) and m["masked_frac"] > 0


@pytest.mark.parametrize("name", loss_names())
@pytest.mark.parametrize("agg", AGGS)
def test_untrained_tokens_get_zero_gradient_even_with_garbage_there(name, agg):
    logp, old_logp, adv, mask = make_batch(seed=5)
    with torch.no_grad():
        logp[mask == 0] = 40.0  # nonsense values an engine never produced
    old_logp = old_logp.masked_fill(mask == 0, float("nan"))
    loss, metrics = compute_policy_loss(name, logp, old_logp, adv, mask, loss_agg=agg, max_tokens=MAX_TOKENS)
    g = grad_of(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert (g[mask == 0] == 0).all() and (g[mask > 0] != 0).any()
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", loss_names())
@pytest.mark.parametrize("agg", AGGS)
def test_normalizer_makes_shard_losses_sum_to_the_full_batch_loss(name, agg):
    logp, old_logp, adv, mask = make_batch(seed=6)
    mask[1] = 0  # a sample with no trained token must not count on either side
    kw = dict(loss_agg=agg, max_tokens=MAX_TOKENS)
    full, _ = compute_policy_loss(name, logp, old_logp, adv, mask, **kw)
    global_count = loss_normalizer(mask[:2], agg) + loss_normalizer(mask[2:], agg)  # what an all-reduce gives
    assert global_count == loss_normalizer(mask, agg)
    shards = [
        compute_policy_loss(name, logp[s], old_logp[s], adv[s], mask[s], normalizer=global_count, **kw)[0]
        for s in (slice(0, 2), slice(2, 4))
    ]
    torch.testing.assert_close(shards[0] + shards[1], full)
    torch.testing.assert_close(grad_of(shards[0] + shards[1], logp), grad_of(full, logp))


def test_an_empty_shard_gives_zero_loss_not_nan():
    logp, old_logp, adv, mask = make_batch()
    loss, metrics = compute_policy_loss("cispo", logp, old_logp, adv, torch.zeros_like(mask))
    assert loss.item() == 0.0 and math.isnan(metrics["is_weight_mean"])


def test_metrics_on_a_hand_computed_example():
    # Four trained tokens with ratios 2, 0.5, 1, 6 (the last clipped by the default clip(r, 0, 5)),
    # one padding token whose ratio would be 100.
    ratios = torch.tensor([[2.0, 0.5, 1.0, 6.0, 100.0]], dtype=torch.float64)
    old_logp = torch.full_like(ratios, -3.0)
    logp = (old_logp + ratios.log()).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.float64)
    adv = torch.tensor([1.0], dtype=torch.float64)
    loss, m = compute_policy_loss("cispo", logp, old_logp, adv, mask)
    assert m["is_weight_mean"] == pytest.approx(9.5 / 4)
    assert (m["is_weight_min"], m["is_weight_max"]) == pytest.approx((0.5, 6.0))
    assert (m["clip_frac_high"], m["clip_frac_low"]) == (0.25, 0.0)
    k3 = [(r - 1) - math.log(r) for r in (2.0, 0.5, 1.0, 6.0)]
    assert m["approx_kl"] == pytest.approx(sum(k3) / 4)
    torch.testing.assert_close(grad_of(loss, logp), torch.tensor([[-2.0, -0.5, -1.0, -5.0, 0.0]], dtype=torch.float64) / 4)
    # PPO drops A>0 tokens above 1+0.2 (ratios 2 and 6); DAPO's clip-higher 0.28 drops the same.
    _, m = compute_policy_loss("ppo", logp, old_logp, adv, mask)
    assert (m["clip_frac_high"], m["clip_frac_low"]) == (0.5, 0.0)
    _, m = compute_policy_loss("cispo_masked", logp, old_logp, -adv, mask)  # A<0: 0.5 < 1-0.2 is masked
    assert m["masked_frac"] == 0.25


def test_registry_refuses_a_duplicate_name(monkeypatch):
    monkeypatch.setattr(losses, "_LOSSES", dict(losses._LOSSES))
    with pytest.raises(ValueError, match="'cispo' is already registered"):
        losses.register_loss("cispo")(losses.reinforce_loss)
    losses.register_loss("my_loss", clip_high=0.3)(losses.clipped_surrogate_loss)
    assert "my_loss" in loss_names() and losses.loss_spec("my_loss").params.clip_high == 0.3


def test_registry_miss_lists_the_known_names():
    logp, old_logp, adv, mask = make_batch()
    with pytest.raises(ValueError, match="unknown policy loss 'cisspo'") as err:
        compute_policy_loss("cisspo", logp, old_logp, adv, mask)
    assert all(name in str(err.value) for name in loss_names())


def test_bad_params_are_refused_with_the_key_named():
    logp, old_logp, adv, mask = make_batch()
    with pytest.raises(ValueError, match="eps_hihg_is"):
        compute_policy_loss("cispo", logp, old_logp, adv, mask, eps_hihg_is=4.0)
    with pytest.raises(ValueError, match="max_tokens"):
        compute_policy_loss("cispo", logp, old_logp, adv, mask, loss_agg="seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="loss_agg"):
        compute_policy_loss("cispo", logp, old_logp, adv, mask, loss_agg="seq_mean")
    with pytest.raises(ValueError, match="advantages must be"):
        compute_policy_loss("cispo", logp, old_logp, adv[:3], mask)


def test_defaults_follow_the_papers():
    def p(name, **params):
        return losses.loss_spec(name, **params).params

    assert (p("cispo").eps_low_is, p("cispo").eps_high_is, p("cispo").loss_agg) == (1.0, 4.0, "token_mean")
    assert (p("ppo").clip_low, p("ppo").clip_high) == (0.2, 0.2)
    assert (p("dapo").clip_low, p("dapo").clip_high) == (0.2, 0.28)
    assert p("grpo").loss_agg == p("gspo").loss_agg == "seq_mean_token_mean"
    assert p("cispo", eps_high_is=2.0).eps_high_is == 2.0
    # None keeps the loss's own default (a config's null), it does not erase it.
    assert p("gspo", clip_low=None, loss_agg=None, normalizer=None) == p("gspo")


def test_gspo_reports_sequence_ratios():
    logp, old_logp, adv, mask = make_batch(seed=7)
    _, m = compute_policy_loss("gspo", logp, old_logp, adv, mask)
    seq = [math.exp(float(((logp[i].detach() - old_logp[i]) * mask[i]).sum() / mask[i].sum())) for i in range(4)]
    assert m["seq_ratio_mean"] == pytest.approx(sum(seq) / 4)
    assert (m["seq_ratio_min"], m["seq_ratio_max"]) == pytest.approx((min(seq), max(seq)))


def test_entropy_from_logits_matches_categorical_and_is_chunk_invariant():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(8))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    for chunk in (1, 4, 1024):
        torch.testing.assert_close(entropy_from_logits(logits, chunk_size=chunk), expected)
    assert entropy_from_logits(logits.bfloat16()).dtype == torch.float32

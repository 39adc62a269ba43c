"""Rollout corrections against references written out sequence by sequence with Python floats,
and one loss + correction end to end (value and gradient) against its formula."""

from __future__ import annotations

import math

import pytest
import torch

from cispo.algo.corrections import correction_names, correction_spec, rollout_correction
from cispo.algo.losses import loss_spec, loss_normalizer
from cispo.config import Config, ConfigError, validate
from cispo.learner.batch import make_batch
from cispo.types import Sample

# Bounds that make every branch (kept and rejected, capped and not) happen on the data below.
BOUNDS = {"tis_token": (0.0, 1.5), "tis_seq": (0.0, 1.5), "mis_token": (0.6, 1.5), "mis_seq": (0.3, 2.0),
          "mis_geo": (0.9, 1.1), "icepop": (0.6, 1.5)}


def data(seed: int = 0):
    """B=6, T=5 log-probs of pi_old and the sampler, a mask with holes, a row with no trained token."""
    g = torch.Generator().manual_seed(seed)
    rollout = -torch.rand(6, 5, generator=g, dtype=torch.float64) * 3
    old = rollout + torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.4
    mask = torch.ones(6, 5, dtype=torch.float64)
    mask[1, 3:] = 0
    mask[2, 1] = 0
    mask[4] = 0
    return old, rollout, mask


def reference(name, old, rollout, mask, low, high):
    """(weights, keep) by the formulas of cispo/algo/corrections.py's table, one sequence at a time."""
    b, t_len = mask.shape
    w, keep = torch.ones(b, t_len, dtype=torch.float64), torch.ones(b, t_len, dtype=torch.float64)
    for i in range(b):
        toks = [t for t in range(t_len) if mask[i, t] > 0]
        if not toks:
            continue
        rho = {t: math.exp(float(old[i, t]) - float(rollout[i, t])) for t in toks}
        rho_seq = math.prod(rho.values())
        geo = rho_seq ** (1 / len(toks))
        for t in toks:
            if name == "tis_token":
                w[i, t] = min(rho[t], high)
            elif name == "tis_seq":
                w[i, t] = min(rho_seq, high)
            elif name in ("mis_token", "icepop"):
                w[i, t], keep[i, t] = rho[t], float(low <= rho[t] <= high)
            elif name == "mis_seq":
                w[i, t], keep[i, t] = rho_seq, float(low <= rho_seq <= high)
            elif name == "mis_geo":
                keep[i, t] = float(low <= geo <= high)
            else:
                raise AssertionError(name)
    return w, keep


def test_every_correction_is_covered():
    assert correction_names() == sorted(BOUNDS)


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_weights_and_masks_match_the_reference(name):
    old, rollout, mask = data()
    low, high = BOUNDS[name]
    weights, keep, m = rollout_correction(correction_spec(name, low, high), old, rollout, mask)
    ref_w, ref_keep = reference(name, old, rollout, mask, low, high)
    trained = mask > 0
    torch.testing.assert_close(keep, ref_keep.float())
    torch.testing.assert_close(weights[trained & (keep > 0)], ref_w[trained & (ref_keep > 0)].float())
    assert (weights[~trained] == 1).all() and (keep[~trained] == 1).all()  # off the mask nothing changes
    masked = float((ref_keep[trained] == 0).double().mean())
    assert m["masked_frac"] == pytest.approx(masked)
    if name.startswith("tis"):
        assert 0 < m["truncated_frac"] < 1 and m["masked_frac"] == 0
    else:
        assert 0 < masked < 1  # the data exercise both sides of the mask
    kept = trained & (ref_keep > 0)
    assert m["weight_mean"] == pytest.approx(float(ref_w[kept].mean()), rel=1e-6)


@pytest.mark.parametrize("name", ["mis_token", "mis_seq", "mis_geo"])
def test_ratio_metrics_are_of_the_level_the_correction_judges(name):
    old, rollout, mask = data(seed=1)
    _, _, m = rollout_correction(correction_spec(name), old, rollout, mask)
    lr = (old - rollout) * mask
    rows = mask.sum(-1) > 0
    judged = {"mis_token": (old - rollout)[mask > 0].exp(),
              "mis_seq": lr.sum(-1)[rows].exp(),
              "mis_geo": (lr.sum(-1)[rows] / mask.sum(-1)[rows]).exp()}[name]
    assert m["ratio_mean"] == pytest.approx(float(judged.mean()))
    assert m["ratio_std"] == pytest.approx(float(judged.std(unbiased=False)))
    assert (m["ratio_min"], m["ratio_max"]) == pytest.approx((float(judged.min()), float(judged.max())))


def test_defaults_follow_the_sources():
    assert correction_spec("none") is None
    assert correction_spec("tis_token").high == correction_spec("mis_seq").high == 2.0
    assert (correction_spec("icepop").low, correction_spec("icepop").high) == (0.5, 5.0)
    assert (correction_spec("mis_geo").low, correction_spec("mis_geo").high) == (0.999, 1.001)
    assert correction_spec("icepop", high=3.0).high == 3.0


def test_huge_log_ratios_are_bounded():
    old = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    rollout = torch.tensor([[-50.0, -50.0]], dtype=torch.float64)
    weights, keep, m = rollout_correction(correction_spec("mis_seq", 0.0, 1e30), old, rollout, torch.ones(1, 2))
    assert torch.isfinite(weights).all() and float(weights[0, 0]) == pytest.approx(math.exp(20), rel=1e-6)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("name", ["tis_token", "mis_seq", "icepop"])
def test_cispo_with_a_correction_matches_its_formula(name, agg):
    """loss = Σ_kept w_it · (-sg(clamp(r, 1-εl, 1+εh)) · A_i · logp_it) / D over the kept tokens only:
    D = their count (token_mean), or Σ_i 1/|kept_i| over sequences with a kept token."""
    old, rollout, mask = data(seed=2)
    logp = (old + torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.3)
    logp.requires_grad_()
    adv = torch.tensor([1.2, -0.5, 0.7, -1.3, 0.4, 0.9], dtype=torch.float64)
    low, high = BOUNDS[name]
    weights, keep, _ = rollout_correction(correction_spec(name, low, high), old, rollout, mask)
    kept_mask = mask * keep
    spec = loss_spec("cispo", loss_agg=agg)
    loss, _ = spec(logp, old, adv, kept_mask, normalizer=loss_normalizer(kept_mask, agg), token_weights=weights)

    ref_w, ref_keep = reference(name, old, rollout, mask, low, high)
    total, rows = logp.new_zeros(()), []
    for i in range(6):
        toks = [t for t in range(5) if mask[i, t] > 0 and ref_keep[i, t] > 0]
        if toks:
            rows.append((i, toks))
    n_tokens = sum(len(toks) for _, toks in rows)
    for i, toks in rows:
        for t in toks:
            r_hat = min(max(math.exp(float(logp[i, t].detach()) - float(old[i, t])), 0.0), 5.0)  # cispo's clip(r, 0, 5)
            tok = -float(ref_w[i, t]) * r_hat * float(adv[i]) * logp[i, t]
            total = total + (tok / n_tokens if agg == "token_mean" else tok / (len(toks) * len(rows)))
    torch.testing.assert_close(loss, total, rtol=1e-6, atol=1e-9)
    (g,) = torch.autograd.grad(loss, logp)
    (g_ref,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-9)


def test_a_rejected_token_leaves_the_batch_loss_mask():
    s = Sample(sample_id="a", group_id="g", prompt_ids=[1, 2], response_ids=[3, 4, 5],
               behaviour_logprobs=[-0.5, -0.7, -0.2], finish_reason="stop", policy_version=0, reward=1.0)
    batch = make_batch([s], pad_id=0).with_old_logp(torch.tensor([[0.0, -0.5, -2.0, -0.2]]))
    weights, keep, _ = rollout_correction(correction_spec("icepop"), batch.old_logp, batch.sampler_logp,
                                          batch.loss_mask)
    corrected = batch.with_correction(weights, keep)
    assert corrected.loss_mask[0].tolist() == [0.0, 1.0, 0.0, 1.0]  # rho = e^-1.3 < 0.5 rejected
    kept = corrected.loss_mask[0] > 0
    assert corrected.token_weights[0][kept].tolist() == pytest.approx([1.0, 1.0])  # rho = 1 where kept


@pytest.mark.parametrize("changes,match", [
    (dict(correction="tis"), "algo.correction: unknown rollout correction 'tis'"),
    (dict(correction="tis_token"), "algo.correction: tis_token weights the loss by pi_old / pi_rollout, which is 1 "
                                   "unless algo.old_logp=recompute"),
    (dict(correction="icepop", old_logp="recompute", correction_low=6.0),
     r"algo.correction_low, algo.correction_high: correction bounds need 0 <= low <= high"),
])
def test_config_names_a_bad_correction(changes, match):
    cfg = Config()
    for key, value in changes.items():
        setattr(cfg.algo, key, value)
    with pytest.raises(ConfigError, match=match):
        validate(cfg)

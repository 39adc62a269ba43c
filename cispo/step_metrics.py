"""The per-step metrics, with stable namespaced names (rollout/, reward/, learner/, env/, perf/)."""

from __future__ import annotations

import statistics

import torch

from cispo.collect import Rollouts
from cispo.controls import length_percentile
from cispo.diagnostics import mismatch_stats


def rollout_metrics(r: Rollouts) -> dict[str, float]:
    samples = r.samples
    scored = [s.reward for s in samples if s.trainable]
    lengths = [len(s.response_ids) for s in samples]
    passes = [bool(s.reward_details.get("pass", s.reward == 1.0)) for s in samples if s.trainable]
    out = {
        "reward/mean": statistics.fmean(scored) if scored else float("nan"),
        "reward/std": statistics.pstdev(scored) if len(scored) > 1 else 0.0,
        "reward/pass_rate": statistics.fmean(passes) if passes else float("nan"),
        "reward/errors": float(len(samples) - len(scored)),
        "reward/error_frac": (len(samples) - len(scored)) / max(len(samples), 1),
        "rollout/response_len_mean": statistics.fmean(lengths) if lengths else 0.0,
        "rollout/response_len_max": float(max(lengths, default=0)),
        "rollout/response_len_p99": length_percentile(lengths) if lengths else 0.0,
        "rollout/groups": float(len(r.groups)),
        "rollout/dropped_zero_variance_groups": float(r.dropped_groups),
        "rollout/sampling_rounds": float(r.rounds),
        "perf/generate_s": r.generate_s,
        "perf/reward_s": r.reward_s,
        **r.controls,
    }
    for reason in ("stop", "length", "repetition", "env_error"):
        out[f"rollout/finish_{reason}_frac"] = sum(s.finish_reason == reason for s in samples) / max(len(samples), 1)
    # Environments that grade (the SWE reward's resolved/unresolved/patch_failed/timeout/infra_error) report a status.
    statuses = [s.reward_details.get("status") for s in samples]
    for name in sorted({st for st in statuses if isinstance(st, str)}):
        out[f"env/status_{name}_frac"] = statuses.count(name) / len(samples)
    advantages = [s.advantage for s in samples]
    out["learner/advantage_mean"] = statistics.fmean(advantages) if advantages else 0.0
    out["learner/advantage_abs_mean"] = statistics.fmean(abs(a) for a in advantages) if advantages else 0.0
    out["learner/zero_advantage_frac"] = sum(a == 0 for a in advantages) / max(len(advantages), 1)
    return out


def learner_metrics(m: dict) -> dict[str, float]:
    """Namespace the learner's merged metrics and derive the train/inference mismatch."""
    out = {f"learner/{k}": v for k, v in m.items() if k != "mismatch_sums"}
    stats = mismatch_stats(torch.tensor(m["mismatch_sums"], dtype=torch.float64))
    out["learner/prob_corr"] = stats["prob_corr"]
    out["learner/prob_abs_diff"] = stats["prob_abs_diff_mean"]
    return out

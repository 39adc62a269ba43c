"""Several updates per rollout batch on the real job path (Ray, DeepSpeed, vLLM), synchronous driver.

With K = 4 mini-batches the step's first update trains on samples of the weights it holds,
and each later one on samples its earlier updates moved the policy away from: the IS
ratio departs from 1 even though no sample is stale. π_old is recomputed, so the first
update's ratio is 1 up to float noise and the departure is the updates' own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cispo.train import train


@pytest.mark.slow
def test_sync_job_with_four_mini_batches_goes_off_policy_within_the_step(ray_session, job_config):
    cfg = job_config(learner__mini_batches=4, algo__old_logp="recompute", algo__correction="tis_token")
    result = train(cfg)
    steps = [json.loads(line) for line in (Path(cfg.trainer.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "reward/mean" in m]
    assert len(steps) == 2
    assert result["optimizer_steps"] == 2 + 2 * 4  # 2 warm-up steps, then 4 updates per RL step
    for m in steps:
        assert m["learner/updates"] == 4
        assert m["learner/is_weight_dev_first"] < 1e-5  # recomputed pi_old: the weights the first update holds
        assert m["learner/is_weight_dev_later"] > 1e-4  # the later updates are off-policy
        assert m["learner/is_weight_dev_later"] > 100 * m["learner/is_weight_dev_first"]
        assert m["learner/is_weight_std"] > 0
        # The correction weighs pi_old / pi_rollout: vLLM and the learner hold the same weights, so it is ~1.
        assert m["learner/correction_ratio_mean"] == pytest.approx(1.0, abs=1e-2)
        assert m["learner/correction_masked_frac"] == 0.0
        assert m["learner/prob_corr"] > 0.99

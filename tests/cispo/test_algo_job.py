"""The algo options and M1's training controls on the real job path (Ray, DeepSpeed, vLLM), both drivers.

One short job per driver turns every option on at once: DAPO overlong shaping,
masking of truncated responses, the staged length curriculum, recomputed old
log-probs and the sampled evaluation with pass@k.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from cispo.checkpoint import latest_checkpoint
from cispo.train import train
from cispo.train_async import train_async

# The policy is barely warmed up (2 SFT steps), so most responses run to the cap: truncated,
# penalised and masked. The curriculum's plateau test always passes (min_delta 1 on a reward
# in [0, 1]) and p99 length reaches the cap, so the cap rises after every `window` steps.
ALL_CONTROLS = dict(algo__overlong_buffer=2, algo__overlong_penalty=0.5, algo__mask_truncated=True,
                    algo__curriculum_caps=[4, 6, 8], algo__curriculum_window=2, algo__curriculum_min_delta=1.0,
                    algo__curriculum_near_cap=0.5, algo__old_logp="recompute",
                    trainer__eval_every=2, trainer__eval_samples=4)


def read_metrics(output_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def step_metrics(cfg) -> list[dict]:
    return [m for m in read_metrics(cfg.trainer.output_dir) if "reward/mean" in m]


def check_controls(steps: list[dict]) -> None:
    for m in steps:
        truncated = m["rollout/finish_length_frac"] * 16  # 4 prompts x 4 samples
        assert m["rollout/truncated_masked"] == pytest.approx(truncated)  # every truncated response, no other
        # A truncated response has length = cap >= cap - buffer + 1: it is penalised.
        assert m["reward/overlong_penalized_frac"] >= m["rollout/finish_length_frac"]
        assert m["reward/overlong_penalty_mean"] <= 0.0
        # recompute: pi_old is the learner's own forward, so every IS ratio is 1 up to float noise,
        # while the mismatch metrics still compare the sampler (vLLM) with the learner.
        assert abs(m["learner/is_weight_max"] - 1.0) < 1e-4 and abs(m["learner/is_weight_min"] - 1.0) < 1e-4
        assert math.isfinite(m["learner/prob_abs_diff"]) and m["learner/prob_corr"] > 0.99
    assert any(m["rollout/truncated_masked"] > 0 for m in steps)  # the masks were exercised
    assert any(m["reward/overlong_penalty_mean"] < 0 for m in steps)
    # The cap: 4 for steps 1-2 (the window fills), raised after step 2, then 6 (logged: the next step's cap).
    caps = [m["rollout/max_new_tokens"] for m in steps]
    assert caps[:2] == [4.0, 6.0]
    for m, cap in zip(steps[1:], caps):
        assert m["rollout/response_len_max"] <= cap  # each step sampled with the cap the one before set


def check_eval(cfg) -> None:
    evals = [m for m in read_metrics(cfg.trainer.output_dir) if "eval/pass@4" in m]
    assert evals, "trainer.eval_every=2 logged no evaluation"
    for m in evals:
        assert 0.0 <= m["eval/pass@1"] <= m["eval/pass@2"] <= m["eval/pass@4"] <= 1.0
        assert 0.0 <= m["eval/greedy_reward"] <= 1.0 and m["eval/errors"] == 0
    # Each evaluation's greedy responses, scored, are in eval_samples.jsonl.
    records = [json.loads(line) for line in (Path(cfg.trainer.output_dir) / "eval_samples.jsonl").read_text().splitlines()]
    for m in evals:
        rows = [r["rows"] for r in records if r["step"] == m["step"]][-1]
        assert len(rows) == cfg.task.eval_size and all(isinstance(r["response"], str) and r["prompt"] for r in rows)
        # The reward's own details are kept (the barely warmed-up policy's greedy answer is often empty: EOS first).
        assert all(r["details"] == {"pass": r["score"] == 1.0} and r["error"] is None for r in rows)
        assert statistics.fmean(r["score"] for r in rows) == pytest.approx(m["eval/greedy_reward"])


@pytest.mark.slow
def test_sync_job_applies_every_control_and_resumes_the_curriculum(ray_session, job_config):
    cfg = job_config(trainer__steps=3, trainer__save_every=2, **ALL_CONTROLS)
    train(cfg)
    steps = step_metrics(cfg)
    check_controls(steps)
    check_eval(cfg)
    _, state = latest_checkpoint(cfg.trainer.output_dir)
    assert state.step == 3 and state.curriculum["stage"] == 1  # saved with the trainer state

    # Resume from step 2's checkpoint: the stage (cap 6) and its metric window come back.
    resumed = job_config(trainer__steps=4, trainer__resume="true", **ALL_CONTROLS)
    (latest_checkpoint(cfg.trainer.output_dir)[0] / "trainer_state.json").unlink()  # back to step 2
    train(resumed)
    after = [m for m in step_metrics(resumed) if m["step"] >= 3]
    assert [m["step"] for m in after[-2:]] == [3, 4]
    assert after[-2]["rollout/response_len_max"] <= 6  # sampled at the restored stage, not the first cap
    assert after[-1]["rollout/max_new_tokens"] == 8.0  # the window (step 3, 4) filled: raised again
    # Step 4 evaluated (eval_every=2) and was the last: the final evaluation is that one, not a second run.
    assert [m["step"] for m in read_metrics(resumed.trainer.output_dir) if "eval/greedy_reward" in m] == [0, 2, 4]
    # eval_samples.jsonl kept the evaluations up to the checkpoint (step 3's of the first run went), as metrics.jsonl did.
    evaluations = (Path(resumed.trainer.output_dir) / "eval_samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in evaluations] == [0, 2, 4]


@pytest.mark.slow
def test_async_job_applies_every_control(ray_session, job_config):
    cfg = job_config(trainer__steps=3, trainer__max_staleness=1, **ALL_CONTROLS)
    train_async(cfg)
    check_controls(step_metrics(cfg))
    check_eval(cfg)

"""The asynchronous driver end to end on the real stack: Ray, a DeepSpeed learner, vLLM, reward workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cispo.train_async import TRAINED_SAMPLES_FILE, train_async


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_async_job_bounds_staleness_trains_each_sample_once_and_resumes_exactly(ray_session, job_config, capsys):
    cfg = job_config(trainer__steps=3, trainer__save_every=2, trainer__max_staleness=1)
    out = Path(cfg.trainer.output_dir)
    first = train_async(cfg)
    assert first["steps"] == 3
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("summary: steps=3 reward_first10=")

    steps = [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(m["rollout/staleness_max"] <= 1 for m in steps)
    assert steps[1]["rollout/staleness_max"] == 1  # step 2 trained groups sampled while step 1 trained
    for key in ("rollout/staleness_mean", "rollout/stale_groups_resampled", "perf/wait_s", "learner/loss",
                "learner/is_weight_mean", "data/next_prompt"):
        assert key in steps[0], key

    cfg.trainer.steps, cfg.trainer.resume = 5, True
    second = train_async(cfg)
    assert second["steps"] == 5
    assert second["optimizer_steps"] == cfg.trainer.sft_steps + 5

    records = read_jsonl(out / TRAINED_SAMPLES_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    for r in records:
        assert all(r["learner_step"] - v <= cfg.trainer.max_staleness for v in r["policy_versions"])
    sample_ids = [i for r in records for i in r["sample_ids"]]
    assert len(sample_ids) == len(set(sample_ids)) == 5 * cfg.rollout.prompts_per_step * cfg.algo.group_size
    # Across the resume no prompt is trained twice and none below the data position is skipped
    # (the prompts in flight at the checkpoint were issued again).
    prompts = [i for r in records for i in r["prompt_indices"]]
    assert len(prompts) == len(set(prompts))
    watermark = int([m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m][-1]["data/next_prompt"])
    assert set(range(watermark)) <= set(prompts)

"""The asynchronous driver end to end on the real stack: Ray, a DeepSpeed learner, vLLM, reward workers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cispo.reward.pool import RewardPool
from cispo.rollout.engines import WeightPushError
from cispo.trained_samples import TRAINED_SAMPLES_FILE
from cispo.train_async import train_async
from cispo.types import Sample

USER_REWARDS = Path(__file__).parents[1] / "reward" / "user_rewards.py"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_async_job_bounds_staleness_trains_each_sample_once_and_resumes_exactly(ray_session, job_config, capsys):
    """With partial rollouts on: the bound holds by each sample's oldest token span."""
    cfg = job_config(trainer__steps=3, trainer__save_every=2, trainer__max_staleness=1,
                     rollout__partial_rollouts=True, rollout__partial_segment_tokens=4)
    out = Path(cfg.trainer.output_dir)
    first = train_async(cfg)
    assert first["steps"] == 3
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("summary: steps=3 reward_first10=")

    steps = [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(m["rollout/staleness_max"] <= 1 for m in steps)
    assert steps[1]["rollout/staleness_max"] == 1  # step 2 trained groups sampled while step 1 trained
    for key in ("rollout/staleness_mean", "rollout/stale_groups_resampled", "rollout/multi_version_frac",
                "perf/wait_s", "learner/loss",
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
        assert [spans[0][0] for spans in r["version_spans"]] == r["policy_versions"]  # the oldest span
    sample_ids = [i for r in records for i in r["sample_ids"]]
    assert len(sample_ids) == len(set(sample_ids)) == 5 * cfg.rollout.prompts_per_step * cfg.algo.group_size
    # Across the resume no prompt is trained twice and none below the data position is skipped
    # (the prompts in flight at the checkpoint were issued again).
    prompts = [i for r in records for i in r["prompt_indices"]]
    assert len(prompts) == len(set(prompts))
    watermark = int([m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m][-1]["data/next_prompt"])
    assert set(range(watermark)) <= set(prompts)


@pytest.mark.slow
@pytest.mark.timeout(600)  # the failure this guards against is a hang
def test_weight_push_that_times_out_fails_the_async_job_with_a_clear_message(ray_session, job_config):
    """The first push queues behind the next step's generation on the engine and cannot finish in 10 ms:
    the job stops with WeightPushError (the producer thread and scoring threads stopped), not a hang."""
    cfg = job_config(trainer__max_staleness=1, trainer__sft_steps=0, trainer__steps=3,
                     rollout__weight_push_timeout_s=0.01)
    with pytest.raises(WeightPushError, match=r"weight push of version 1 to 1/1 rollout engines did not finish "
                                              r"within rollout.weight_push_timeout_s=0.01 s"):
        train_async(cfg)
    assert not [t for t in threading.enumerate() if t.name.startswith(("rollout-collector", "rollout-scoring"))]


def test_concurrent_scoring_calls_replace_a_killed_worker_once_and_lose_nothing(ray_session):
    """The producer keeps several scoring calls in flight and evaluation scores beside them:
    a worker killed under three calls at once is replaced once, and each call's part is scored again."""
    from actor_processes import Killer, raylet_pids

    pool = RewardPool(f"{USER_REWARDS}:slow_reward", timeout_s=5.0, max_error_fraction=0.0, num_workers=2)
    calls = [[Sample(sample_id=f"{c}-{i}", group_id=str(c), prompt_ids=[1], response_ids=[2],
                     behaviour_logprobs=[-0.1], finish_reason="stop", policy_version=0) for i in range(4)]
             for c in range(3)]  # 2 samples per worker per call, 0.3 s each: 3 calls queued on each worker
    killer = Killer(raylet_pids(), "RewardWorker.score", timeout_s=60)
    killer.start()
    threads = [threading.Thread(target=pool.score, args=(batch,)) for batch in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    killer.join()
    assert killer.pid is not None
    assert [s.reward for batch in calls for s in batch] == [1.0] * 12
    assert pool.restarts == 1
    pool.shutdown()

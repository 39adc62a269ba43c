"""Reward plug-ins: loading by module and file path, and failures that never crash a run."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from cispo.reward.loader import RewardLoadError, load_reward_fn
from cispo.reward.pool import RewardFunctionError, RewardPool
from cispo.types import Sample

USER_FILE = Path(__file__).with_name("user_rewards.py")


def samples(*responses: str) -> list[Sample]:
    return [Sample(sample_id=str(i), group_id="g", prompt_ids=[1], response_ids=[2], behaviour_logprobs=[-0.1],
                   finish_reason="stop", policy_version=0, prompt_text="1+1=", response_text=r,
                   metadata={"answer": "2"}) for i, r in enumerate(responses)]


def test_load_by_module_and_file_path():
    assert load_reward_fn("cispo.reward.builtin:addition_reward")("1+1=", "2", {"answer": "2"})["score"] == 1.0
    assert load_reward_fn(f"{USER_FILE}:length_reward")("", "abc", {}) == 3.0


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "expected 'package.module:name'"),
    ("/nonexistent/file.py:fn", "no file"),
    ("cispo.reward.not_a_module:fn", "cannot import module"),
    (f"{USER_FILE}:missing", "has no 'missing'"),
    (f"{USER_FILE}:NOT_A_FUNCTION", "not callable"),
])
def test_load_errors_name_the_problem(spec, message):
    with pytest.raises(RewardLoadError, match=message):
        load_reward_fn(spec)


def test_good_functions_score(ray_session):
    for fn, expected, details in [("length_reward", 3.0, {}), ("detailed_reward", 0.5, {"note": ""}),
                                  ("async_reward", 1.0, {})]:
        pool = RewardPool(f"{USER_FILE}:{fn}", timeout_s=5, max_error_fraction=0.0)
        batch = samples("abc")
        stats = pool.score(batch)
        assert (batch[0].reward, batch[0].reward_details, batch[0].reward_error) == (expected, details, None)
        assert stats.errors == 0
        pool.shutdown()


def test_batched_function(ray_session):
    pool = RewardPool(f"{USER_FILE}:batch_reward", timeout_s=5, max_error_fraction=0.0, batched=True)
    batch = samples("2", "3", "2")
    pool.score(batch)
    assert [s.reward for s in batch] == [1.0, 0.0, 1.0]
    pool.shutdown()


@pytest.mark.parametrize("fn, error", [
    ("raising_reward", "ValueError: cannot score"),
    ("nan_reward", "returned nan"),
    ("none_reward", "returned None"),
])
def test_bad_results_are_recorded_and_masked(ray_session, fn, error):
    pool = RewardPool(f"{USER_FILE}:{fn}", timeout_s=5, max_error_fraction=1.0)
    batch = samples("x", "y")
    stats = pool.score(batch)
    assert stats.errors == 2
    for s in batch:
        assert s.reward is None and error in s.reward_error and not s.trainable
    pool.shutdown()


def test_hanging_call_times_out_and_worker_is_replaced(ray_session):
    pool = RewardPool(f"{USER_FILE}:hanging_reward", timeout_s=1.0, max_error_fraction=1.0)
    batch = samples("ok", "hang", "ok")
    pool.score(batch)
    assert [s.reward for s in batch] == [1.0, None, 1.0]
    assert "timed out after 1 s" in batch[1].reward_error
    assert pool.restarts == 1  # the thread still sleeping in the old worker died with it
    again = samples("ok")
    pool.score(again)
    assert again[0].reward == 1.0
    pool.shutdown()


def test_many_hanging_calls_wait_out_their_limits_together(ray_session):
    pool = RewardPool(f"{USER_FILE}:hanging_reward", timeout_s=1.0, max_error_fraction=1.0)
    batch = samples(*["hang"] * 16)
    start = time.monotonic()
    pool.score(batch)
    assert all("timed out after 1 s" in s.reward_error for s in batch)
    assert time.monotonic() - start < 8  # one after another they took 16 s; together about 2
    pool.shutdown()


def test_scoring_stops_once_the_error_budget_is_spent(ray_session, tmp_path):
    calls = tmp_path / "calls"
    pool = RewardPool(f"{USER_FILE}:counted_raising_reward", timeout_s=5, max_error_fraction=0.25)
    batch = samples(*"abcdefgh")
    for s in batch:
        s.metadata = {"calls_file": str(calls)}
    with pytest.raises(RewardFunctionError) as info:
        pool.score(batch)
    assert len(calls.read_text().splitlines()) == 3  # the budget is 2 of 8: the third error fails the step
    assert "failed on 3/8 samples" in str(info.value) and "5 more were not scored" in str(info.value)
    assert str(info.value).count("Traceback") == 1
    pool.shutdown()


def test_worker_killed_mid_scoring_is_replaced_and_its_samples_scored_again(ray_session):
    from actor_processes import Killer, raylet_pids

    pool = RewardPool(f"{USER_FILE}:slow_reward", timeout_s=5.0, max_error_fraction=0.0, num_workers=2)
    killer = Killer(raylet_pids(), "RewardWorker.score", timeout_s=60)
    killer.start()
    batch = samples(*"abcdef")  # 3 per worker, 0.3 s each: a worker is killed while it scores
    pool.score(batch)
    killer.join()
    assert killer.pid is not None
    assert [s.reward for s in batch] == [1.0] * 6  # none lost: the dead worker's part was scored again
    assert pool.restarts == 1
    pool.shutdown()


def test_function_that_kills_its_process_is_masked_and_counted(ray_session):
    pool = RewardPool(f"{USER_FILE}:process_exit_reward", timeout_s=5.0, max_error_fraction=1.0)
    batch = samples("a", "b")
    stats = pool.score(batch)
    assert stats.errors == 2 and not any(s.trainable for s in batch)
    assert all("reward worker died, and its replacement failed on the same samples" in s.reward_error
               for s in batch)
    assert pool.restarts == 2  # the worker, then its replacement
    pool.shutdown()


def test_hanging_async_call_times_out(ray_session):
    pool = RewardPool(f"{USER_FILE}:hanging_async_reward", timeout_s=0.5, max_error_fraction=1.0)
    batch = samples("a")
    pool.score(batch)
    assert "timed out" in batch[0].reward_error
    pool.shutdown()


def test_error_budget_stops_the_job_with_one_traceback(ray_session):
    pool = RewardPool(f"{USER_FILE}:raising_reward", timeout_s=5, max_error_fraction=0.5)
    with pytest.raises(RewardFunctionError) as info:
        pool.score(samples("a", "b"))
    text = str(info.value)
    assert "raising_reward" in text and "2/2 samples" in text and "Traceback" in text
    assert text.count("Traceback") == 1
    pool.shutdown()


def test_unloadable_function_fails_at_start(ray_session):
    with pytest.raises(Exception, match="has no 'missing'"):
        RewardPool(f"{USER_FILE}:missing", timeout_s=5, max_error_fraction=0.0)

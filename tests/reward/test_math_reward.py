"""The math-verify reward: answers it scores, inputs it refuses, and checks that fail loudly,
in this process and inside the real reward worker (a thread, where signal.alarm cannot work)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cispo.reward import math as math_reward
from cispo.reward.math import MathVerifyError, math_verify_reward
from cispo.reward.pool import RewardPool
from cispo.types import Sample

ROOT = Path(__file__).resolve().parents[2]
FIFTY_THOUSAND_DIGITS = "The answer is \\boxed{" + "7" * 50_000 + "}"
NESTED_LATEX = "\\boxed{" + "\\frac{1}{" * 200 + "2" + "}" * 201
# Short, yet sympy evaluates it exactly and never finishes: only the deadline stops it.
EXPONENT_TOWER = "The answer is \\boxed{9^{9^{9^{9}}}}"


def score(response: str, answer) -> dict:
    return math_verify_reward("What is it?", response, {"answer": answer})


@pytest.mark.parametrize("response, answer, passed, extracted", [
    ("So the answer is \\boxed{\\frac{1}{2}}.", "1/2", True, "\\frac{1}{2}"),
    ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", True, "\\frac{1}{2}"),
    ("The final answer is $0.5$.", "1/2", True, "\\frac{1}{2}"),
    ("The final answer is $0.5$.", "\\frac{1}{2}", True, "\\frac{1}{2}"),
    ("Halving once more: \\boxed{\\dfrac{1}{4}}", "1/2", False, "\\frac{1}{4}"),
    ("First 1/2, then rechecking: \\boxed{3}", "1/2", False, "3"),  # the boxed answer counts
    ("\\boxed{\\{3, 1, 2\\}}", "\\{1,2,3\\}", True, "\\{3, 1, 2\\}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2,3\\}", False, "\\{1, 2\\}"),
    ("\\boxed{[0, 1)}", "[0,1)", True, "[0, 1)"),
    ("\\boxed{42}", 42, True, "42"),  # a number as ground truth
    ("The answer is 0.5", 0.5, True, "0.5"),
    ("The answer is 41", 42, False, "41"),
])
def test_scores_right_and_wrong_answers(response, answer, passed, extracted):
    out = score(response, answer)
    assert out == {"score": float(passed), "pass": passed, "extracted": extracted,
                   "status": "correct" if passed else "wrong"}


def test_no_answer_scores_zero_and_says_so():
    assert score("I cannot solve this.", "1/2") == {"score": 0.0, "pass": False, "extracted": "",
                                                    "status": "no_answer"}


def test_missing_or_bad_ground_truth_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"metadata\['answer'\].*keys \['question', 'solution'\]"):
        math_verify_reward("p", "\\boxed{1}", {"question": "q", "solution": "1"})
    with pytest.raises(ValueError, match=r"must be a string or a number, got NoneType"):
        score("\\boxed{1}", None)


@pytest.mark.parametrize("response, reason", [
    (FIFTY_THOUSAND_DIGITS, "a number of 50000 digits"),
    (NESTED_LATEX, "brackets nested 201 deep"),
])
def test_pathological_responses_score_zero_unchecked_with_a_reason(response, reason):
    start = time.monotonic()
    out = score(response, "1/2")
    assert time.monotonic() - start < 1.0  # refused before math-verify sees it
    assert out["score"] == 0.0 and out["status"] == "refused" and reason in out["reason"]


def test_a_checker_that_dies_mid_check_raises_and_the_next_call_gets_a_fresh_one():
    assert score("\\boxed{1}", "1")["pass"]  # the checker is up
    pid = math_reward._CHECKER._proc.pid
    raised = {}

    def check() -> None:
        try:
            score(EXPONENT_TOWER, "1")
        except MathVerifyError as e:
            raised["error"] = str(e)

    thread = threading.Thread(target=check)
    thread.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert "died" in raised["error"] and "SIGKILL" in raised["error"]
    assert score("\\boxed{1}", "1")["pass"]
    assert math_reward._CHECKER._proc.pid != pid


def test_a_check_whose_caller_was_killed_stops_on_its_own():
    """Killed mid-check, the caller cannot kill the checker: the checker's own CPU cap ends it."""
    caller = ("import os, threading, time; from cispo.reward import math as m; "
              "m.math_verify_reward('', '1', {'answer': '1'}); "  # the checker is up
              f"threading.Thread(target=m.math_verify_reward, args=('', {EXPONENT_TOWER!r}, {{'answer': '1'}}), "
              "daemon=True).start(); time.sleep(1); print(m._CHECKER._proc.pid, flush=True); os._exit(0)")
    pid = int(subprocess.run([sys.executable, "-c", caller], capture_output=True, text=True, check=True).stdout)
    deadline = time.monotonic() + math_reward.CHECK_TIMEOUT_S + 20
    while running(pid):
        assert time.monotonic() < deadline, f"the orphaned checker {pid} still runs"
        time.sleep(0.5)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_config_leaves_the_reward_room_to_fail_on_its_own():
    cfg = OmegaConf.load(ROOT / "conf/reward/math.yaml")
    assert cfg.fn == "cispo.reward.math:math_verify_reward"
    # Past reward.timeout_s the worker itself gives up and is replaced: the reward's error comes first.
    assert cfg.timeout_s > math_reward.START_TIMEOUT_S + math_reward.CHECK_TIMEOUT_S


def samples(*responses: str) -> list[Sample]:
    return [Sample(sample_id=str(i), group_id="g", prompt_ids=[1], response_ids=[2], behaviour_logprobs=[-0.1],
                   finish_reason="stop", policy_version=0, prompt_text="What is it?", response_text=r,
                   metadata={"answer": "1/2"}) for i, r in enumerate(responses)]


def test_in_the_reward_worker_pathological_answers_return_promptly_and_nothing_is_lost(ray_session):
    cfg = OmegaConf.load(ROOT / "conf/reward/math.yaml")
    pool = RewardPool(cfg.fn, timeout_s=cfg.timeout_s, max_error_fraction=1.0)
    try:
        batch = samples("\\boxed{\\frac{1}{2}}", "The answer is 0.5", "\\boxed{1/3}",
                        FIFTY_THOUSAND_DIGITS, NESTED_LATEX)
        start = time.monotonic()
        stats = pool.score(batch)
        # The checker's start (~1 s) and three quick checks; the two refused need no checking.
        assert time.monotonic() - start < math_reward.START_TIMEOUT_S
        assert [s.reward for s in batch] == [1.0, 1.0, 0.0, 0.0, 0.0] and stats.errors == 0
        # Refused responses are wrong answers the policy should learn from, so scored 0, not masked.
        assert [s.reward_details["status"] for s in batch] == ["correct", "correct", "wrong", "refused", "refused"]
        assert "50000 digits" in batch[3].reward_details["reason"]
        assert "nested 201 deep" in batch[4].reward_details["reason"]

        tower = samples(EXPONENT_TOWER)
        start = time.monotonic()
        stats = pool.score(tower)
        took = time.monotonic() - start
        # A check that ran out of time says nothing about the answer, so it is an error (the sample
        # is masked and counted), raised by the reward at its own deadline: before reward.timeout_s,
        # so the worker was not given up on and replaced.
        assert math_reward.CHECK_TIMEOUT_S <= took < math_reward.CHECK_TIMEOUT_S + 15
        assert stats.errors == 1 and tower[0].reward is None and not tower[0].trainable
        assert "MathVerifyError: math-verify did not finish checking this response within 10 s" in tower[0].reward_error
        assert pool.restarts == 0

        again = samples("\\boxed{0.5}")  # a fresh checker took over
        pool.score(again)
        assert again[0].reward == 1.0
    finally:
        pool.shutdown()

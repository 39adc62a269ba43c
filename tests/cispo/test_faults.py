"""Faults mid-run of a real job: engine, reward worker and learner processes SIGKILLed.

Each test runs a short job on the real stack (Ray, vLLM, DeepSpeed, reward workers),
kills an actor's process while it works, and checks from the run's own records
(trained_samples.jsonl, metrics.jsonl) that the job finished, that every sample was
trained at most once, that every prompt consumed was trained, and that the fault was
counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from actor_processes import Killer, raylet_pids, steps_logged

from cispo.checkpoint import latest_checkpoint
from cispo.config import ConfigError, resume_mode
from cispo.supervise import run_job
from cispo.trained_samples import TRAINED_SAMPLES_FILE

USER_REWARDS = Path(__file__).parents[1] / "reward" / "user_rewards.py"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_trained_once(cfg) -> list[dict]:
    """Every step recorded once, no sample or prompt trained twice, every prompt below the final data
    position trained (the asynchronous driver may also have trained a few above it)."""
    out = Path(cfg.trainer.output_dir)
    records = read_jsonl(out / TRAINED_SAMPLES_FILE)
    assert [r["step"] for r in records] == list(range(1, cfg.trainer.steps + 1))
    sample_ids = [i for r in records for i in r["sample_ids"]]
    assert len(sample_ids) == len(set(sample_ids)) == cfg.trainer.steps * cfg.rollout.prompts_per_step * cfg.algo.group_size
    prompts = [i for r in records for i in r["prompt_indices"]]
    assert len(prompts) == len(set(prompts)) == cfg.trainer.steps * cfg.rollout.prompts_per_step
    _, state = latest_checkpoint(out)
    assert set(range(state.next_prompt)) <= set(prompts)
    return [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]


def test_resume_modes():
    assert [resume_mode(v) for v in (True, "True", False, "false", "auto")] == ["true", "true", "false", "false", "auto"]
    with pytest.raises(ConfigError, match="trainer.resume: must be auto, true or false, got 'sometimes'"):
        resume_mode("sometimes")


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [0, 1], ids=["sync", "async"])
def test_engine_and_reward_worker_killed_mid_run_are_replaced_and_their_work_redone(ray_session, job_config,
                                                                                    max_staleness):
    # No warm-up: the random policy rarely stops early, so each generate call runs long enough to be hit.
    cfg = job_config(trainer__steps=4, trainer__sft_steps=0, rollout__max_new_tokens=48, rollout__prompts_per_step=8,
                     reward__fn=f"{USER_REWARDS}:paced_addition_reward", reward__num_workers=2,
                     trainer__max_staleness=max_staleness)
    out = cfg.trainer.output_dir
    with (Killer(raylet_pids(), "VLLMWorker.generate", when=lambda: steps_logged(out) >= 1) as engine_killer,
          Killer(raylet_pids(), "RewardWorker.score", when=lambda: steps_logged(out) >= 2) as reward_killer):
        result = run_job(cfg)
    assert engine_killer.pid is not None and reward_killer.pid is not None
    assert result["steps"] == 4

    steps = check_trained_once(cfg)
    assert steps[-1]["faults/rollout_restarts"] == 1
    assert steps[-1]["faults/reward_worker_restarts"] == 1
    assert steps[-1]["faults/learner_restarts"] == 0
    assert sum(m["reward/errors"] for m in steps) == 0  # the killed worker's samples were scored again
    if max_staleness == 0:  # sampler and learner hold the same weights, the replacement engine included
        assert all(m["learner/prob_corr"] > 0.999 for m in steps)
    else:  # the replacement sampled with the last pushed weights: still within the staleness bound
        records = read_jsonl(Path(cfg.trainer.output_dir) / TRAINED_SAMPLES_FILE)
        assert all(r["learner_step"] - v <= max_staleness for r in records for v in r["policy_versions"])


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [0, 1], ids=["sync", "async"])
def test_learner_killed_mid_run_restarts_the_job_from_its_last_checkpoint(ray_session, job_config, capsys,
                                                                         max_staleness):
    cfg = job_config(trainer__steps=4, trainer__save_every=2, trainer__max_restarts=1,
                     trainer__max_staleness=max_staleness)
    out = cfg.trainer.output_dir
    # Once step 3 is logged (checkpoint at 2) the learner's process is killed, whatever it runs
    # (a step's train_step may be over before a poll sees it); the job goes back to step 2.
    with Killer(raylet_pids(), "Learner", when=lambda: steps_logged(out) >= 3) as killer:
        result = run_job(cfg)
    assert killer.pid is not None
    assert "learner died" in capsys.readouterr().err
    assert result["steps"] == 4
    assert result["optimizer_steps"] == cfg.trainer.sft_steps + 4  # the optimizer state of step 2 came back

    steps = check_trained_once(cfg)
    # Steps 3 (and 4) were trained again from the step-2 checkpoint; metrics.jsonl keeps each step once.
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert steps[-1]["faults/learner_restarts"] == 1


@pytest.mark.slow
def test_learner_killed_while_its_engine_generates_restarts_the_job_from_its_last_checkpoint(
        ray_session, job_config, capsys):
    """A colocated engine dies with its learner rank; nothing is replaced in place: the job goes back to
    its last checkpoint (step 2), engines included, and trains every prompt once."""
    # No warm-up: the random policy rarely stops early, so each generate call runs long enough to be hit.
    cfg = job_config(rollout__colocate=True, trainer__steps=4, trainer__save_every=2, trainer__max_restarts=1,
                     trainer__sft_steps=0, rollout__max_new_tokens=48)
    out = cfg.trainer.output_dir
    with Killer(raylet_pids(), "Learner.generate", when=lambda: steps_logged(out) >= 3) as killer:
        result = run_job(cfg)
    assert killer.pid is not None
    assert "learner died" in capsys.readouterr().err
    assert result["steps"] == 4 and result["optimizer_steps"] == 4
    steps = check_trained_once(cfg)
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert steps[-1]["faults/learner_restarts"] == 1
    assert all(m["learner/prob_corr"] > 0.999 for m in steps)

"""Every wait has a deadline whose expiry names what was waited for: placement and reward here; the weight
push in tests/cispo/test_train_async.py and tests/rollout/test_vllm_worker.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from cispo.algo.losses import resolve_loss
from cispo.config import ConfigError
from cispo.job import check_placement
from cispo.learner.group import LearnerGroup
from cispo.reward.pool import RewardPool
from cispo.types import Sample

USER_REWARDS = Path(__file__).parents[1] / "reward" / "user_rewards.py"


@ray.remote(num_cpus=5)
class CPUHolder:
    def ready(self) -> bool:
        return True


def test_learner_placement_gives_up_after_its_deadline_naming_the_ask_and_what_is_free(ray_session, job_config):
    holder = CPUHolder.remote()  # 5 of the session's 6 CPUs taken: no room for 2 ranks of 2
    ray.get(holder.ready.remote())
    cfg = job_config(learner__world_size=2, learner__num_cpus_per_rank=2.0, ray__placement_timeout_s=2.0)
    try:
        with pytest.raises(RuntimeError) as info:
            LearnerGroup(cfg, "/nonexistent", resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
        text = str(info.value)
        assert "2 learner ranks of {'CPU': 2.0}" in text and "ray.placement_timeout_s=2 s" in text
        assert "free now: {" in text and "'CPU': 1.0" in text
    finally:
        ray.kill(holder)


@pytest.mark.parametrize("section, key", [("learner", "resources"), ("rollout", "resources")])
def test_an_ask_no_node_can_hold_fails_at_once_naming_it(ray_session, job_config, section, key):
    cfg = job_config()
    getattr(cfg, section).resources = {"gpu_node": 1.0}
    with pytest.raises(ConfigError, match=rf"asks for {{'CPU': 1.0, 'gpu_node': 1.0}} \({section}\..*"
                                          r"no node of the Ray cluster has that: 1 node\(s\) with CPU 6"):
        check_placement(cfg)
    check_placement(job_config())  # the default asks fit


@pytest.mark.slow
def test_a_reward_worker_that_stops_answering_is_given_up_on_naming_the_limit(ray_session):
    """A function that holds the GIL keeps the worker's own per-call timeout from firing: the pool's
    deadline for the whole part is what ends the wait."""
    pool = RewardPool(f"{USER_REWARDS}:gil_holding_reward", timeout_s=1.0, max_error_fraction=1.0)
    batch = [Sample(sample_id="0", group_id="g", prompt_ids=[1], response_ids=[2], behaviour_logprobs=[-0.1],
                    finish_reason="stop", policy_version=0, prompt_text="p", response_text="r")]
    pool.score(batch)
    assert "did not answer within 31 s for 1 samples (reward.timeout_s=1 each, and 30 s); replaced" in \
        batch[0].reward_error
    assert pool.restarts == 1
    pool.shutdown()


def test_a_learner_call_past_its_deadline_names_the_call(ray_session, job_config, tmp_path):
    from cispo.config import PolicyConfig
    from cispo.envs.addition import AdditionTask
    from cispo.learner.group import LearnerTimeoutError
    from cispo.policy import create_policy

    cfg = job_config(learner__call_timeout_s=0.001)
    policy = create_policy(PolicyConfig(), AdditionTask.build_tokenizer(), tmp_path / "policy")
    learner = LearnerGroup(cfg, str(policy), resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
    try:
        with pytest.raises(LearnerTimeoutError, match=r"the learner's save_hf did not finish within "
                                                      r"learner.call_timeout_s=0.001 s on 1 of 1 ranks"):
            learner.save_hf(str(tmp_path / "hf"))
    finally:
        learner.shutdown()

"""Colocated training and rollout (`rollout.colocate=true`): each learner rank holds an engine in its process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoTokenizer

from cispo.algo.losses import resolve_loss
from cispo.config import Config, ConfigError, validate
from cispo.envs.addition import AdditionTask
from cispo.learner.batch import make_batch, sft_batch
from cispo.learner.colocated import ColocatedEngines
from cispo.learner.group import LearnerGroup
from cispo.policy import create_policy
from cispo.rollout.engines import EngineSpec
from cispo.rollout.source import Prompt, to_group
from cispo.train import train
from cispo.types import SamplingParams

PROMPTS = ["1+2=", "7+5=", "3+3=", "9+0="]


def test_colocate_runs_the_synchronous_driver_only():
    cfg = Config()
    cfg.rollout.colocate, cfg.trainer.max_staleness = True, 1
    with pytest.raises(ConfigError, match="trainer.max_staleness.*synchronous driver only"):
        validate(cfg)
    cfg.trainer.max_staleness, cfg.rollout.num_workers = 0, 2
    with pytest.raises(ConfigError, match="rollout.num_workers.*one engine in each learner rank"):
        validate(cfg)


@pytest.mark.parametrize("engine, arch, zero_stage", [("vllm", "qwen2", 2), ("builtin", "minimax", 3),
                                                     ("builtin", "qwen2", 2)])
def test_in_process_update_gives_the_engine_the_learners_logprobs(ray_session, tmp_path, engine, arch, zero_stage):
    """After the learner moved away from the starting weights, the in-memory update makes each rank's
    engine sample with the learner's probabilities, token for token."""
    cfg = Config()
    cfg.model.arch, cfg.rollout.engine, cfg.learner.zero_stage = arch, engine, zero_stage
    cfg.learner.world_size = 2
    policy = create_policy(cfg.model, AdditionTask.build_tokenizer(), tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    learner = LearnerGroup(cfg, str(policy), resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
    kwargs = {"max_model_len": 64} if engine == "vllm" else {"num_threads": None}
    try:
        engines = ColocatedEngines(learner, EngineSpec(engine, str(policy), 0, 0, kwargs), generate_timeout_s=300)
        prompts = [tokenizer(p).input_ids for p in PROMPTS]
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=6)
        before = [c[0].token_ids for c in engines.generate(prompts, greedy)]
        answers = [tokenizer("12", add_special_tokens=False).input_ids] * len(prompts)
        for _ in range(3):  # large supervised steps move the learner well away from the engines' weights
            learner.sft_step(sft_batch(prompts, answers, tokenizer.pad_token_id), lr=1e-2)

        engines.push_weights(version=5)
        assert engines.version == 5 and ray.get([w.policy_version.remote() for w in engines.workers]) == [5, 5]
        after = [c[0].token_ids for c in engines.generate(prompts, greedy)]
        assert after != before

        sampled = engines.generate(prompts, SamplingParams(n=2, max_tokens=4, seed=1))
        assert all(c.policy_version == 5 for row in sampled for c in row)
        samples = [s for row, p, c in zip(PROMPTS, prompts, sampled)
                   for s in to_group(Prompt(p, row, {}), c, tokenizer.decode).samples]
        batch = make_batch(samples, tokenizer.pad_token_id)
        mask = batch.loss_mask.bool()
        torch.testing.assert_close(learner.logprobs(batch)[mask], batch.old_logp[mask], atol=1e-4, rtol=1e-4)
    finally:
        learner.shutdown()


def _metrics(output_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def test_colocated_job_resumes_where_it_stopped(ray_session, job_config):
    """Dense policy, vLLM in the learner rank: a job saved at step 2 and resumed trains steps 3-4 with
    the checkpoint's weights in its engine (the sampler and learner agree again)."""
    cfg = job_config(rollout__colocate=True, trainer__steps=2, trainer__save_every=1)
    assert train(cfg)["optimizer_steps"] == cfg.trainer.sft_steps + 2
    cfg.trainer.steps, cfg.trainer.resume = 4, True
    assert train(cfg)["optimizer_steps"] == cfg.trainer.sft_steps + 4
    steps = [m for m in _metrics(cfg.trainer.output_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert all(m["learner/prob_corr"] > 0.999 for m in steps)
    assert all(m["faults/rollout_restarts"] == 0 for m in steps)


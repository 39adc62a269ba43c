"""EngineGroup survives an engine killed mid-generation: replaced, the pushed weights loaded, prompts re-issued."""

from __future__ import annotations

import pytest
import ray
import torch
from actor_processes import Killer, raylet_pids
from transformers import AutoModelForCausalLM, AutoTokenizer

from cispo.config import Config
from cispo.envs.addition import AdditionTask
from cispo.policy import create_policy
from cispo.rollout.engines import EngineSpec, RolloutError, EngineGroup
from cispo.types import SamplingParams

GREEDY = SamplingParams(n=1, temperature=0.0, max_tokens=6)
LONG = SamplingParams(n=8, max_tokens=60, seed=0)  # long enough to be killed while it runs


def greedy_tokens(completions) -> list[list[int]]:
    return [c[0].token_ids for c in completions]


@pytest.mark.slow
def test_engine_killed_mid_generation_is_replaced_with_the_pushed_weights(ray_session, tmp_path):
    policy = create_policy(Config().model, AdditionTask.build_tokenizer(), tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    prompts = [tokenizer(p).input_ids for p in ("1+2=", "7+5=", "3+3=", "9+0=")]
    # Weights other than the checkpoint's, so a replacement that merely reloaded the checkpoint would show.
    model = AutoModelForCausalLM.from_pretrained(str(policy))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p) * p.std())
    pushed = ray.put(list(model.state_dict().items()))
    expected = [model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)[0, len(p):].tolist()
                for p in prompts]

    engines = EngineGroup(EngineSpec("vllm", str(policy), 1.0, 0.0, {"max_model_len": 128}),
                           num_workers=1, generate_timeout_s=300, push_timeout_s=60, max_restarts=1)
    try:
        from_checkpoint = greedy_tokens(engines.generate(prompts, GREEDY))
        engines.push_weights(pushed, version=5)
        assert greedy_tokens(engines.generate(prompts, GREEDY)) == expected != from_checkpoint

        killer = Killer(raylet_pids(), "VLLMWorker.generate", timeout_s=120)
        killer.start()
        out = engines.generate(prompts * 4, LONG)  # the engine dies mid-call; the call is issued again
        killer.join()
        assert killer.pid is not None and engines.restarts == 1
        assert len(out) == 16 and all(len(cs) == 8 and cs[0].policy_version == 5 for cs in out)
        assert greedy_tokens(engines.generate(prompts, GREEDY)) == expected  # the replacement holds version 5

        killer = Killer(raylet_pids(), "VLLMWorker.generate", timeout_s=120)
        killer.start()
        with pytest.raises(RolloutError, match="rollout.max_restarts=1 engine restarts are used up"):
            engines.generate(prompts * 4, LONG)
        killer.join()
    finally:
        engines.shutdown()

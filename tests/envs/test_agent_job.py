"""env.mode=agent end to end: agent episodes in Docker sandboxes are the groups both drivers train on."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import docker
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401  (registers `config_schema` in Hydra's ConfigStore)
from cispo.config import validate
from cispo.envs.agent import AgentConfig, run_episode
from cispo.envs.agent_format import BUILTIN_FORMAT, agent_format
from cispo.envs.agent_tools import parse_tool_call
from cispo.envs.chat import PromptEncoder
from cispo.envs.swe_agent import AgentTask, reference_trajectory
from cispo.envs.swe_task import SWETask
from docker_helpers import our_containers
from scripted_policy import Turns


class ContainerKiller(threading.Thread):
    """Kills the first sandbox container of this process it finds in use (a repository in its workspace:
    an episode or a grading under way, not an idle warm one), as a crash would."""

    def __init__(self, spare: set[str]):
        super().__init__(daemon=True)
        self.spare = spare  # containers that are not the job's (another fixture's pool)
        self.killed: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            try:
                in_use = [c for c in our_containers() if c.status == "running" and c.id not in self.spare
                          and c.exec_run(["test", "-d", "/workspace/repo"]).exit_code == 0]
                if in_use:
                    in_use[0].kill()
                    self.killed = in_use[0].id
            except docker.errors.APIError:  # a container went away while listed or killed: look again
                pass
            time.sleep(0.2)


TEMPLATES = Path(__file__).with_name("templates")


@pytest.mark.parametrize("template, bpe_vocab", [(None, 0), (None, 400), ("qwen25_tools.jinja", 0),
                                                 ("llama31_tools.jinja", 0)])
def test_an_episode_in_the_templates_own_tool_format_is_token_exact(tmp_path, pool, template, bpe_vocab):
    """Tools are declared through a chat template that takes them, calls are written and read in its
    format, observations framed as its tool messages; the warm-up's answer is exactly the token stream of
    an episode that applies the gold patch and submits, and that episode resolves the task. What the
    learner trains is the sampled ids and the observation ids, in order, observations masked. So too
    with a BPE vocabulary the job learns from the task (model.bpe_vocab), whose tokens span several
    bytes."""
    from types import SimpleNamespace

    from cispo.job import Job

    task = SWETask.synthetic(tmp_path)
    config = AgentConfig(max_turns=4)
    job = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(bpe_vocab=bpe_vocab)))
    tokenizer = Job._new_policy_tokenizer(job, AgentTask(task, config, BUILTIN_FORMAT))  # as the job calls it
    assert len(tokenizer) == (bpe_vocab or len(task.build_tokenizer()))
    chat = (TEMPLATES / template).read_text() if template else None
    fmt = agent_format(tokenizer, chat)
    assert (fmt is BUILTIN_FORMAT) == (template is None)
    agent_task = AgentTask(task, config, fmt)
    encoder = PromptEncoder(tokenizer, chat_template=str(TEMPLATES / template) if template else "none",
                            tools=agent_task.tools)
    for i in range(len(task)):
        prompt, answer = agent_task.reference_pair(i)
        instance = task.instance(agent_task.row(i).metadata["instance_id"])
        apply_turn, submit_turn = fmt.call("bash", {"command": "x"}), fmt.call("submit", {})
        assert parse_tool_call(submit_turn).name == "submit"
        apply_turn = answer[0]
        policy = Turns(tokenizer, [apply_turn, submit_turn])
        res = run_episode(instance, policy, tokenizer, pool, config=config, prompt_ids=encoder.encode(prompt),
                          fmt=fmt)
        assert (res.status, res.finish_reason, res.turns) == ("resolved", "stop", 2), res.error
        assert answer == reference_trajectory(instance.patch, fmt)
        assert tokenizer.decode(res.response_ids) == "".join(answer)
        assert res.tool_calls == {"bash": 1, "submit": 1} and res.malformed_calls == res.tool_timeouts == 0
        observation = [t for t, m in zip(res.response_ids, res.loss_mask) if m == 0]
        assert res.response_ids == policy.sampled[0] + observation + policy.sampled[1]
        assert res.loss_mask == [1] * len(policy.sampled[0]) + [0] * len(observation) + [1] * len(policy.sampled[1])
        # the warm-up trains on this episode's own tokens and mask, then the stop token
        assert encoder.encode_answer(answer) == (res.response_ids + [tokenizer.eos_token_id], res.loss_mask + [1])
        if template:  # the observation is framed as the template frames a tool message
            framed = tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": "A"}, {"role": "tool", "content": "[exit code 0]"}],
                tools=fmt.tools, chat_template=chat, tokenize=False, add_generation_prompt=True)
            assert framed.endswith("A" + tokenizer.decode(observation))


def test_the_learner_puts_no_gradient_on_observation_tokens(tmp_path):
    """An episode's sample as the learner packs it: the loss's gradient reaches the logits that predict
    the model's own tokens, and not one that predicts an observation token or the prompt."""
    import torch

    from cispo.algo.losses import compute_policy_loss
    from cispo.config import PolicyConfig
    from cispo.learner.batch import make_batch
    from cispo.policy import create_policy
    from cispo.types import Sample
    from transformers import AutoModelForCausalLM

    tokenizer = SWETask.build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(create_policy(PolicyConfig(), tokenizer, tmp_path / "policy"))
    mask = [1, 1, 1, 0, 0, 0, 0, 1, 1]  # a turn, an observation, a turn
    sample = Sample("s-0", "s", prompt_ids=[1, 40, 41, 42], response_ids=list(range(50, 59)),
                    behaviour_logprobs=[-0.5 if m else 0.0 for m in mask], finish_reason="stop", policy_version=0,
                    loss_mask=mask, reward=1.0)
    sample.advantage = 1.0
    batch = make_batch([sample], tokenizer.pad_token_id)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logits.retain_grad()
    logp = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    loss, _ = compute_policy_loss("cispo", logp, batch.old_logp, batch.advantages, batch.loss_mask)
    loss.backward()
    touched = logits.grad[0].abs().sum(-1) > 0  # per position: does the loss reach the logits there?
    prompt = len(sample.prompt_ids) - 1  # response token j is predicted at position prompt + j
    assert touched.tolist() == [False] * prompt + [bool(m) for m in mask]


@pytest.mark.slow
@pytest.mark.parametrize("staleness, replay", [(0, False), (1, True)])
def test_a_job_trains_on_agent_episodes_with_either_driver(ray_session, tmp_path, staleness, replay):
    """The asynchronous run also replays the episodes' MoE routing (algo.routing_replay)."""
    out = tmp_path / "run"
    overrides = ["+experiment=swe_synthetic", "env.mode=agent", f"trainer.output_dir={out}", f"algo.routing_replay={replay}",
                 f"task.data_dir={tmp_path / 'tasks'}", f"trainer.max_staleness={staleness}", "trainer.steps=2",
                 "trainer.sft_steps=1", "trainer.sft_batch_size=2", "rollout.prompts_per_step=2",
                 "algo.group_size=2", "env.max_turns=2",
                 "env.max_turn_tokens=24", "env.max_response_tokens=256", "rollout.episodes_in_flight=4",
                 "logger.progress_bar=false", "task.eval_size=0"]
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        cfg = validate(OmegaConf.to_object(compose(config_name="config", overrides=overrides)))
    from cispo.supervise import run_job

    before = {c.id for c in our_containers()}
    killer = ContainerKiller(spare=before)
    killer.start()
    try:
        result = run_job(cfg)
    finally:
        killer.stop.set()
    assert result["steps"] == 2
    steps = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["rollout/groups"] == 2 and m["data/prompts_trained"] == 2
        assert 1 <= m["env/turns_mean"] <= 2 and 0 <= m["env/submit_rate"] <= 1
        assert m["env/sandbox_s_mean"] > 0 and m["env/grade_s_mean"] > 0
        assert 0 < m["moe/routing_agreement"] <= 1  # the episodes carried the sampler's routing
        fracs = [v for k, v in m.items() if k.startswith("env/status_")]
        assert math.isclose(sum(fracs), 1.0), m
    records = [json.loads(line) for line in (out / "trained_samples.jsonl").read_text().splitlines()]
    details = [d for r in records for d in r["reward_details"]]
    assert len(details) == 8  # 2 steps x 2 prompts x 2 episodes, each with its transcript
    assert all(d["status"] and isinstance(d["transcript"], list) for d in details)
    assert any(d["transcript"] and d["transcript"][0]["role"] == "assistant" for d in details)
    # The killed container's use is never scored 0: an episode's is masked as an infra error, a
    # grading's is retried in a fresh container (and counted in `attempts`).
    assert killer.killed is not None
    errors = [(reward, error) for r in records for reward, error in zip(r["rewards"], r["reward_errors"]) if error]
    assert all(reward is None for reward, _ in errors)
    assert sum(d["status"] == "infra_error" for d in details) == len(errors)
    assert errors or any(d.get("attempts", 1) > 1 for d in details)
    deadline = time.monotonic() + 30  # a killed container's removal may still be under way
    while {c.id for c in our_containers()} - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not {c.id for c in our_containers()} - before  # every episode's and grading's container is removed
    for r in records:  # an episode's version is its oldest turn's: the staleness rule holds for every token
        assert all(r["step"] - 1 - v <= staleness for v in r["policy_versions"])
    spans = [json.loads(line)["kind"] for line in (out / "timeline.jsonl").read_text().splitlines()]
    assert spans.count("episode") >= 8 and "generate" not in spans

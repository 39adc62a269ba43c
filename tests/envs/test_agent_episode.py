"""The multi-turn agent against a scripted policy (fixed actions) and a real byte-level BPE tokenizer."""

import json
import math

import pytest
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from cispo.envs.agent import AgentConfig, render_prompt, run_episode
from cispo.envs.agent_tools import REPO, TOOL_DOCS, ToolCall, run_tool
from cispo.envs.docker_daemon import connect
from cispo.envs.repo import snapshot
from docker_helpers import our_containers, restart_docker_daemon
from cispo.types import Completion, SamplingParams


@pytest.fixture(scope="module")
def tokenizer():
    bpe = ByteLevelBPETokenizer()
    corpus = [TOOL_DOCS, "def mean(xs):\n    return total(xs) / len(xs)\n", "<tool_call></tool_call> bash str_replace"]
    bpe.train_from_iterator(corpus * 20, vocab_size=400, min_frequency=2, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, clean_up_tokenization_spaces=False)


class ScriptedPolicy:
    """Emits fixed turns; the log-prob of every token is -0.5 so the test can tell them apart."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tok = tokenizer
        self.turns = list(turns)
        self.prompts: list[list[int]] = []

    def generate(self, prompts, params: SamplingParams):
        self.prompts.append(prompts[0])
        ids = self.tok.encode(self.turns.pop(0), add_special_tokens=False)
        finish = "length" if len(ids) > params.max_tokens else "stop"
        ids = ids[: params.max_tokens]
        return [[Completion(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason=finish, policy_version=3)]]


def call(name, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def test_agent_fixes_the_bug_and_masks_observations(synthetic, pool, tokenizer):
    task = synthetic["synthetic__statkit-1"]
    turns = [
        "Let me look. " + call("bash", command="grep -n 'len' statkit/__init__.py") + " trailing words never acted on",
        call("str_replace_editor", command="view", path="statkit/__init__.py", view_range=[5, 6]),
        "not a call at all",
        call("str_replace_editor", command="str_replace", path="statkit/__init__.py",
             old_str="(len(xs) - 1)", new_str="len(xs)"),
        call("bash", command="python3 -m pytest -q tests 2>&1 | tail -1"),
        call("submit"),
    ]
    policy = ScriptedPolicy(tokenizer, turns)
    res = run_episode(task, policy, tokenizer, pool, config=AgentConfig(max_turns=10))
    assert (res.status, res.reward, res.finish_reason, res.turns) == ("resolved", 1.0, "stop", 6)
    assert "-    return total(xs) / (len(xs) - 1)" in res.diff and res.grade.patch_method == "git_apply"

    n = len(res.response_ids)
    assert len(res.logprobs) == len(res.loss_mask) == n
    # Model tokens carry the engine's log-probs and mask 1; observation tokens 0.0 and 0.
    assert all((lp == -0.5) == (m == 1) for lp, m in zip(res.logprobs, res.loss_mask))
    assert all(lp == 0.0 for lp, m in zip(res.logprobs, res.loss_mask) if m == 0)
    text = tokenizer.decode(res.response_ids)
    assert "trailing words never acted on" not in text  # cut after the call
    observations = dict(enumerate(t for role, t in res.transcript if role == "tool"))
    assert "return total(xs) / (len(xs) - 1)" in observations[0] and observations[0].endswith("[exit code 0]")
    assert "     6\t    return total(xs) / (len(xs) - 1)" in observations[1]
    assert observations[2].startswith("error: no tool call found")
    assert observations[3].startswith("edited")
    assert "1 passed" in observations[4]
    # Every turn saw the whole history: prompt + everything so far.
    assert policy.prompts[-1] == res.prompt_ids + res.response_ids[: len(policy.prompts[-1]) - len(res.prompt_ids)]
    assert tokenizer.decode(res.prompt_ids) == render_prompt(task, AgentConfig(max_turns=10))

    sample = res.to_sample("s0", "g0", metadata=task.to_row())
    assert sample.trainable and sample.reward == 1.0 and sample.policy_version == 3
    assert sample.loss_mask == res.loss_mask


def test_limits_end_the_episode(synthetic, pool, tokenizer):
    task = synthetic["synthetic__statkit-1"]
    chatter = [call("bash", command="yes | head -c 100000")] * 5
    config = AgentConfig(max_turns=3, observation_bytes=512, max_observation_tokens=64)
    res = run_episode(task, ScriptedPolicy(tokenizer, chatter), tokenizer, pool, config=config)
    assert (res.status, res.reward, res.finish_reason, res.turns) == ("unresolved", 0.0, "length", 3)
    assert all(len(t) < 700 for role, t in res.transcript if role == "tool")  # head + tail of the flood
    masked = [i for i, m in enumerate(res.loss_mask) if m == 0]
    assert len(masked) <= 3 * 64

    tight = AgentConfig(max_turns=10, max_response_tokens=60)
    res = run_episode(task, ScriptedPolicy(tokenizer, chatter * 2), tokenizer, pool, config=tight)
    assert res.finish_reason == "length" and len(res.response_ids) <= 60


def test_infra_error_is_masked(synthetic, pool, tokenizer, tmp_path):
    task = synthetic["synthetic__statkit-1"]
    junk = tmp_path / "junk.bundle"
    junk.write_text("not a repository")
    broken = type(task)(**{**task.__dict__, "repo_path": junk})
    res = run_episode(broken, ScriptedPolicy(tokenizer, [call("submit")]), tokenizer, pool)
    assert res.status == "infra_error" and math.isnan(res.reward) and res.finish_reason == "env_error"
    sample = res.to_sample("s1", "g1")
    assert not sample.trainable and sample.reward_error


def test_an_agent_episodes_container_is_removed_not_reused(synthetic, pool, tokenizer):
    """A process the model left behind could trace the pool's reset (same uid) and outlive it into a
    later grading, so the container an agent's commands ran in never serves another use."""
    task = synthetic["synthetic__statkit-1"]
    turns = [call("bash", command="cat /etc/hostname"), call("submit")]  # Docker's hostname: the short id
    res = run_episode(task, ScriptedPolicy(tokenizer, turns), tokenizer, pool)
    short_id = next(text for role, text in res.transcript if role == "tool").split("\n")[0]
    pool.drain()
    assert len(short_id) == 12 and not connect().containers.list(all=True, filters={"id": short_id})


def test_bash_is_one_shell_session_per_episode(synthetic, pool):
    """cd and exported variables carry over; a timed-out command restarts the session from
    the state before it (and says so); the next episode starts fresh."""
    task = synthetic["synthetic__statkit-1"]

    def bash(sb, command, timeout=10):
        return run_tool(ToolCall("bash", {"command": command}), sb, timeout=timeout, output_cap=4096).text

    with pool.sandbox() as sb:
        sb.write_tar(snapshot(task.repo_path, task.base_commit))
        assert bash(sb, "pwd").startswith(f"{REPO}\n")
        assert bash(sb, "cd statkit && export GREETING='hi there' && LOCAL=1") == "[exit code 0]"
        assert bash(sb, 'pwd; echo "$GREETING"; echo "[$LOCAL]"; exit 3') == f"{REPO}/statkit\nhi there\n[]\n[exit code 3]"
        timed_out = bash(sb, "cd /tmp && export GREETING=lost && sleep 100", timeout=1)
        assert timed_out.startswith("[timed out after 1 s] (the shell was restarted")
        assert bash(sb, 'pwd; echo "$GREETING"') == f"{REPO}/statkit\nhi there\n[exit code 0]"
    for _ in range(2):  # the next episodes (the pool's reset wiped the state): a fresh session
        with pool.sandbox() as sb:
            sb.write_tar(snapshot(task.repo_path, task.base_commit))
            assert bash(sb, 'pwd; echo "[$GREETING]"') == f"{REPO}\n[]\n[exit code 0]"


class RestartsTheDaemon(ScriptedPolicy):
    """Restarts the Docker daemon before its second turn: the episode's container is gone then."""

    def generate(self, prompts, params: SamplingParams):
        if len(self.prompts) == 1:
            restart_docker_daemon()
        return super().generate(prompts, params)


def test_a_daemon_restart_mid_episode_is_masked_and_its_container_removed(synthetic, pool, tokenizer):
    task = synthetic["synthetic__statkit-1"]
    turns = [call("bash", command="ls"), call("bash", command="ls"), call("submit")]
    res = run_episode(task, RestartsTheDaemon(tokenizer, turns), tokenizer, pool)
    assert res.status == "infra_error" and math.isnan(res.reward) and res.finish_reason == "env_error", res
    assert not res.to_sample("s1", "g1").trainable  # masked from the loss, never scored 0
    pool.drain()
    assert not our_containers()  # the stopped container is removed too
    # The pool serves again on the restarted daemon.
    res = run_episode(task, ScriptedPolicy(tokenizer, [call("submit")]), tokenizer, pool)
    assert res.status == "unresolved" and res.reward == 0.0

"""The multi-turn agent against a scripted policy (fixed actions) and a real byte-level BPE tokenizer."""

import json
import math

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from cispo.envs.agent import AgentConfig, render_prompt, run_episode
from cispo.envs.agent_tools import REPO, TOOL_DOCS, ToolCall, run_tool
from cispo.envs.docker_daemon import connect
from cispo.envs.repo import snapshot
from docker_helpers import our_containers, restart_docker_daemon
from cispo.model import LightningMoELM, ModelConfig, Sampler
from cispo.model.moe import SamplerRouting
from cispo.types import Completion, RoutedExperts, SamplingParams


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


def test_an_unsubmitted_episode_is_graded_as_left_unless_told_to_score_it_zero(synthetic, pool, tokenizer):
    task = synthetic["synthetic__statkit-1"]
    fix = call("str_replace_editor", command="str_replace", path="statkit/__init__.py",
               old_str="(len(xs) - 1)", new_str="len(xs)")
    res = run_episode(task, ScriptedPolicy(tokenizer, [fix]), tokenizer, pool, config=AgentConfig(max_turns=1))
    assert (res.status, res.reward, res.finish_reason) == ("resolved", 1.0, "length")  # autosubmit

    strict = AgentConfig(max_turns=1, grade_unsubmitted=False)
    res = run_episode(task, ScriptedPolicy(tokenizer, [fix]), tokenizer, pool, config=strict)
    assert (res.status, res.reward, res.finish_reason) == ("unsubmitted", 0.0, "length")
    assert res.grade is None and "grade" not in res.seconds  # no test ran
    assert "+    return total(xs) / len(xs)" in res.diff  # the edit is still on record
    assert res.to_sample("s", "g").trainable

    res = run_episode(task, ScriptedPolicy(tokenizer, [fix, call("submit")]), tokenizer, pool,
                      config=AgentConfig(max_turns=2, grade_unsubmitted=False))
    assert (res.status, res.reward, res.finish_reason) == ("resolved", 1.0, "stop")


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


class RecordsPositions(ScriptedPolicy):
    """Scripted turns whose routing record names each token's position: token t's (layer 0) experts
    are (t % 256, t // 256), over the prompt and every turn token but the last, as an engine's."""

    def generate(self, prompts, params: SamplingParams):
        [[completion]] = super().generate(prompts, params)
        routed = range(len(prompts[0]) + len(completion.token_ids) - 1)
        completion.routed_experts = RoutedExperts(bytes(b for t in routed for b in (t % 256, t // 256)), 1, 2)
        return [[completion]]


def _record_positions(routed: RoutedExperts) -> list[int]:
    return [lo + 256 * hi for lo, hi in zip(routed.ids[::2], routed.ids[1::2])]


def test_an_episode_carries_its_last_turns_routing_cut_to_the_tokens_it_kept(synthetic, pool, tokenizer):
    task = synthetic["synthetic__statkit-1"]
    submitted = run_episode(task, RecordsPositions(tokenizer, [
        call("bash", command="ls") + " trailing words never acted on", call("submit")]), tokenizer, pool)
    tokens = len(submitted.prompt_ids) + len(submitted.response_ids) - 1  # the submit call's last token never ran
    assert _record_positions(submitted.routed_experts) == list(range(tokens))
    assert submitted.to_sample("s", "g").routed_experts == submitted.routed_experts

    # Out of turns: the second turn is cut after its call, its observation closes the episode unrun.
    limited = run_episode(task, RecordsPositions(tokenizer, [call("bash", command="ls"), call("bash", command="ls") + " and"]),
                          tokenizer, pool, config=AgentConfig(max_turns=2))
    last_observation = limited.loss_mask[::-1].index(1)
    assert limited.finish_reason == "length" and last_observation > 0
    kept = len(limited.prompt_ids) + len(limited.response_ids) - last_observation
    assert _record_positions(limited.routed_experts) == list(range(kept))

    unrecorded = run_episode(task, ScriptedPolicy(tokenizer, [call("submit")]), tokenizer, pool)
    assert unrecorded.routed_experts is None and unrecorded.to_sample("s", "g").routed_experts is None


def test_the_built_in_samplers_record_of_an_episode_is_the_routing_of_its_whole_sequence(synthetic, pool, tokenizer):
    """A real hybrid MoE policy plays (malformed turns: it is untrained); the record it leaves
    equals the experts one full forward of the episode's tokens picks, observations included."""
    torch.manual_seed(0)
    model = LightningMoELM(ModelConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        head_dim=32, layer_types=["linear_attention", "full_attention"], num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=4096, bos_token_id=None, eos_token_id=None)).eval()
    config = AgentConfig(max_turns=2, max_turn_tokens=24, max_observation_tokens=32)
    res = run_episode(synthetic["synthetic__statkit-1"], Sampler(model, max_batch=1), tokenizer, pool,
                      sampling=SamplingParams(max_tokens=24, seed=1), config=config)
    routed = res.routed_experts
    sequence = res.prompt_ids + res.response_ids
    assert res.malformed_calls == 2 and (routed.layers, routed.top_k) == (2, 2)
    assert routed.tokens == len(sequence) - res.loss_mask[::-1].index(1) - 1  # up to the last sampled token

    experts = torch.zeros((len(sequence), 2, 2), dtype=torch.uint8)
    experts[:routed.tokens] = torch.frombuffer(bytearray(routed.ids), dtype=torch.uint8).view(routed.tokens, 2, 2)
    recorded = torch.arange(len(sequence)) < routed.tokens
    with torch.no_grad():
        full = model(torch.tensor([sequence]), routing=SamplerRouting(experts, recorded, replay=False))
    assert full.agreeing_tokens.tolist() == [routed.tokens] * 2


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

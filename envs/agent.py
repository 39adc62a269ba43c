"""The multi-turn SWE agent episode: a policy works in a sandbox, its final diff is graded.

Token bookkeeping is the point. The sequence is prompt, then alternating model turns
and observations. Model tokens keep the ids and log-probs the engine sampled (never
re-tokenised); observation tokens are ours: behaviour log-prob 0.0 and loss mask 0,
so the learner trains only on what the policy chose. A turn is cut right after its
first complete tool call (the engine cannot stop on a string): what follows was
never acted on. Limits: turns, total response tokens, tokens per turn, observation
bytes (head + tail). When the policy stops, the repository's `git diff` is graded in
another, clean sandbox: nothing the agent left running can touch the grading.

The policy is any object with the `generate` method of `cispo.rollout.engine.RolloutEngine`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from cispo.envs.agent_format import BUILTIN_FORMAT, AgentFormat
from cispo.envs.agent_tools import (
    REPO,
    Observation,
    ToolCallError,
    end_of_call,
    parse_tool_call,
    run_tool,
)
from cispo.envs.docker_daemon import InfraError
from cispo.envs.grading import GradeResult, grade
from cispo.envs.pool import SandboxPool
from cispo.envs.repo import RepoError, snapshot
from cispo.envs.swe_instances import SWEInstance
from cispo.envs.task import Messages
from cispo.types import Completion, FinishReason, RoutedExperts, Sample, SamplingParams

# The diff the agent leaves is graded as a patch; one larger than this is not a fix.
MAX_DIFF_BYTES = 1024 * 1024


class Policy(Protocol):
    """The part of `RolloutEngine` an episode uses."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]: ...


@dataclass(frozen=True)
class AgentConfig:
    max_turns: int = 20  # model turns before the episode ends unsubmitted
    max_response_tokens: int = 8192  # model + observation tokens after the prompt
    max_turn_tokens: int = 1024  # tokens one model turn may sample
    max_observation_tokens: int = 1024  # tokens of one observation (cut at the end)
    observation_bytes: int = 8192  # command output kept per call: head + tail
    command_timeout: float = 60.0  # seconds per tool call
    max_seconds: float = 1800.0  # wall time of the turns; checked before each turn (the episode ends as `length`)
    system: str = "You are a software engineer fixing an issue in the repository at " + REPO + "."
    tool_docs: bool = True  # describe the tools in a text prompt (False: a terse prompt; the policy knows them)
    # An episode that ends without submit is graded on the repository as it left it (SWE-agent's
    # autosubmit); False: it scores 0 as status "unsubmitted", with no test run, so submitting pays.
    grade_unsubmitted: bool = True


@dataclass
class AgentResult:
    prompt_ids: list[int]
    response_ids: list[int]  # model turns and observations, in order
    logprobs: list[float]  # per response token; 0.0 on observation tokens
    loss_mask: list[int]  # per response token; 1 model, 0 observation
    reward: float  # NaN for infra_error
    status: str  # the grade's status, infra_error, or unsubmitted (AgentConfig.grade_unsubmitted=False)
    finish_reason: FinishReason  # stop (submitted), length (out of turns or tokens), repetition, env_error
    turns: int
    diff: str
    policy_version: int
    grade: GradeResult | None = None
    error: str = ""
    transcript: list[tuple[str, str]] = field(default_factory=list)  # (role, text)
    tool_calls: dict[str, int] = field(default_factory=dict)  # calls read from the turns, by tool name
    malformed_calls: int = 0  # turns whose call could not be read (no call, bad JSON)
    tool_timeouts: int = 0  # calls killed at AgentConfig.command_timeout
    seconds: dict[str, float] = field(default_factory=dict)  # sandbox (start + repo copy), turns, grade
    # The MoE experts the engine routed the episode's tokens to (engines that record them): the last
    # turn's record, which covers the prompt and every token before that turn's last one; the
    # observation that may follow was never run, and the learner routes it itself.
    routed_experts: RoutedExperts | None = None

    def details(self) -> dict[str, Any]:
        """What a person needs to see the episode: the grade, its counts and times, its transcript."""
        return {"status": self.status, "turns": self.turns, **(self.grade.to_dict() if self.grade else {}),
                "submitted": self.finish_reason == "stop", "tool_calls": dict(self.tool_calls),
                "malformed_calls": self.malformed_calls, "tool_timeouts": self.tool_timeouts,
                **{f"{part}_s": round(s, 3) for part, s in self.seconds.items()},
                "transcript": [{"role": role, "text": text} for role, text in self.transcript]}

    def to_sample(self, sample_id: str, group_id: str, metadata: dict[str, Any] | None = None) -> Sample:
        return Sample(
            sample_id=sample_id,
            group_id=group_id,
            prompt_ids=self.prompt_ids,
            response_ids=self.response_ids,
            behaviour_logprobs=self.logprobs,
            finish_reason=self.finish_reason,
            policy_version=self.policy_version,
            loss_mask=self.loss_mask,
            metadata=metadata or {},
            reward=None if math.isnan(self.reward) else self.reward,
            reward_details=self.details(),
            reward_error=(self.error or "infra_error") if self.status == "infra_error" else None,
            routed_experts=self.routed_experts,
        )


def render_prompt(task: SWEInstance, config: AgentConfig, fmt: AgentFormat = BUILTIN_FORMAT) -> str | Messages:
    """The episode's prompt: text in the built-in format, chat messages for a template's tool format."""
    return fmt.prompt(config.system, task.problem_statement, config.tool_docs)


def run_episode(
    task: SWEInstance,
    policy: Policy,
    tokenizer,
    pool: SandboxPool,
    sampling: SamplingParams = SamplingParams(),
    config: AgentConfig = AgentConfig(),
    prompt_ids: list[int] | None = None,
    fmt: AgentFormat = BUILTIN_FORMAT,
) -> AgentResult:
    """Play one episode of `task` with `policy` and grade the result. `prompt_ids`: the episode's
    prompt as the job encoded it (default: `render_prompt` encoded by `tokenizer`); `fmt`: how turns
    and observations are framed (`cispo.envs.agent_format`)."""
    if prompt_ids is None:
        prompt = render_prompt(task, config, fmt)
        prompt_ids = (tokenizer.encode(prompt) if isinstance(prompt, str) else list(tokenizer.apply_chat_template(
            prompt, tools=fmt.tools, add_generation_prompt=True, tokenize=True, return_dict=False)))
    ep = _Episode(tokenizer, config, fmt, prompt_ids)
    try:
        started = time.perf_counter()
        repo_tar = snapshot(task.repo_path, task.base_commit)
        with pool.sandbox(task.image, discard_after=True) as sb:  # the model's commands ran in it
            sb.write_tar(repo_tar)
            ep.seconds["sandbox"] = time.perf_counter() - started
            ep.play(policy, sampling, sb)
            diff = sb.exec(["sh", "-c", "git add -A && git diff --cached --binary HEAD"],
                           workdir=REPO, output_cap=MAX_DIFF_BYTES, timeout=60)
    except (InfraError, RepoError) as e:
        return ep.result(math.nan, "infra_error", "env_error", error=str(e))
    if diff.truncated or not diff.ok:
        why = "larger than the diff cap" if diff.truncated else f"git diff failed: {diff.output[-500:]}"
        return ep.result(0.0, "patch_failed", ep.finish, diff=diff.output, error=why)
    if ep.finish != "stop" and not config.grade_unsubmitted:
        return ep.result(0.0, "unsubmitted", ep.finish, diff=diff.output)
    grading = time.perf_counter()
    graded = grade(task, diff.output, pool)
    ep.seconds["grade"] = time.perf_counter() - grading
    finish = "env_error" if graded.status == "infra_error" else ep.finish
    return ep.result(graded.reward, graded.status, finish, diff=diff.output, grade=graded, error=graded.error)


class _Episode:
    """The growing token sequence of one episode and the limits on it."""

    def __init__(self, tokenizer, config: AgentConfig, fmt: AgentFormat, prompt_ids: list[int]):
        self.tok = tokenizer
        self.config, self.fmt = config, fmt
        self.prompt_ids = prompt_ids
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.mask: list[int] = []
        self.turns = 0
        self.versions: list[int] = []
        self.finish: FinishReason = "length"
        self.transcript: list[tuple[str, str]] = []
        self.tool_calls: Counter[str] = Counter()
        self.malformed_calls = self.tool_timeouts = 0
        self.seconds: dict[str, float] = {}
        self.routed_experts: RoutedExperts | None = None

    def budget(self) -> int:
        return self.config.max_response_tokens - len(self.ids)

    def play(self, policy: Policy, sampling: SamplingParams, sb) -> None:
        """Turns until submit, or a limit: out of turns, tokens or time ends it as `length`."""
        started = time.perf_counter()
        try:
            self._play(policy, sampling, sb, deadline=started + self.config.max_seconds)
        finally:
            self.seconds["turns"] = time.perf_counter() - started

    def _play(self, policy: Policy, sampling: SamplingParams, sb, deadline: float) -> None:
        cfg = self.config
        self.finish = "length"
        while self.turns < cfg.max_turns and self.budget() > 0 and time.perf_counter() < deadline:
            params = dataclasses.replace(sampling, n=1, max_tokens=min(cfg.max_turn_tokens, self.budget()))
            completion = policy.generate([self.prompt_ids + self.ids], params)[0][0]
            self.turns += 1
            self.versions.append(completion.policy_version)
            text = self._add_turn(completion)
            if completion.finish_reason == "repetition":
                self.finish = "repetition"
                return
            try:
                tool_call = parse_tool_call(text)
            except ToolCallError as e:
                self.malformed_calls += 1
                obs = Observation(f"error: {e}")
            else:
                self.tool_calls[tool_call.name] += 1
                obs = run_tool(tool_call, sb, cfg.command_timeout, cfg.observation_bytes)
            self.tool_timeouts += obs.timed_out
            if obs.submitted:
                self.finish = "stop"
                return
            self._add_observation(obs.text)

    def _add_turn(self, completion: Completion) -> str:
        ids, lps = list(completion.token_ids), list(completion.logprobs)
        cut = self._cut_after_call(ids)
        ids, lps = ids[:cut], lps[:cut]
        self._keep_routing(completion.routed_experts, len(self.prompt_ids) + len(self.ids) + cut)
        self.ids += ids
        self.logprobs += lps
        self.mask += [1] * len(ids)
        text = self.tok.decode(ids)
        self.transcript.append(("assistant", text))
        return text

    def _keep_routing(self, record: RoutedExperts | None, kept: int) -> None:
        """The turn's record of the experts (the whole history was its prompt, so it replaces the
        last one: the later tokens' states were computed from its routing of the earlier ones), cut
        to the `kept` tokens of the sequence that the episode keeps."""
        if record is None:
            self.routed_experts = None
            return
        row = record.layers * record.top_k
        self.routed_experts = RoutedExperts(record.ids[: min(record.tokens, kept) * row], record.layers, record.top_k)

    def _cut_after_call(self, ids: list[int]) -> int:
        """The shortest prefix whose text holds a complete tool call (all of it if none).

        Binary search: "the decoded prefix holds a complete call" is monotone in length.
        """
        if end_of_call(self.tok.decode(ids)) < 0:
            return len(ids)
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if end_of_call(self.tok.decode(ids[:mid])) >= 0:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _add_observation(self, text: str) -> None:
        """Observation tokens: the format's frame around the tool's output, tokenised whole (as the
        warm-up tokenises a reference episode's observation) when it fits the per-observation cap and
        the budget; otherwise the output is cut first, so the model still sees that it is its turn."""
        head, framed = self.fmt.observation_head, self.fmt.observation(text)
        eos = self.tok.eos_token
        if eos and self.ids and self.ids[-1] == self.tok.eos_token_id and head.startswith(eos):
            # the turn ended with the stop token the frame would close it with
            head, framed = head[len(eos):], framed[len(eos):]
        encode = lambda s: self.tok.encode(s, add_special_tokens=False)  # noqa: E731
        cap = min(self.config.max_observation_tokens, self.budget())
        ids = encode(framed)
        if len(ids) > cap:
            tail = encode(self.fmt.observation_tail + self.fmt.turn_prefix)
            ids = ((encode(head) + encode(text))[: max(cap - len(tail), 0)] + tail)[:cap]
        self.ids += ids
        self.logprobs += [0.0] * len(ids)
        self.mask += [0] * len(ids)
        self.transcript.append(("tool", text))

    def result(self, reward: float, status: str, finish: FinishReason, **kw: Any) -> AgentResult:
        return AgentResult(
            prompt_ids=self.prompt_ids,
            response_ids=self.ids,
            logprobs=self.logprobs,
            loss_mask=self.mask,
            reward=reward,
            status=status,
            finish_reason=finish,
            turns=self.turns,
            diff=kw.pop("diff", ""),
            policy_version=min(self.versions, default=0),
            transcript=self.transcript,
            tool_calls=dict(self.tool_calls),
            malformed_calls=self.malformed_calls,
            tool_timeouts=self.tool_timeouts,
            seconds=self.seconds,
            routed_experts=self.routed_experts,
            **kw,
        )

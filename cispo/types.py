"""The data that flows between parts. A leaf module: it imports nothing of ours.

Engines return `Completion`s; the controller turns them into `Sample`s, scores
them, groups them per prompt (`Group`), and the learner packs them into a
`TrainBatch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "repetition", "env_error"]


@dataclass(frozen=True)
class SamplingParams:
    """What every rollout engine (vLLM or the built-in sampler) accepts."""

    n: int = 1  # samples per prompt (the group size G)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k
    max_tokens: int = 64
    stop_token_ids: tuple[int, ...] = ()
    # Repetition early stop (MiniMax-M1): end a generation after this many
    # consecutive tokens each sampled with probability > repetition_prob. 0 disables.
    repetition_window: int = 0
    repetition_prob: float = 0.99
    seed: int | None = None


@dataclass(frozen=True)
class RoutedExperts:
    """The experts an MoE engine sent tokens to (for routing replay): `ids` holds a (tokens, layers,
    top_k) array of expert ids, one byte each (so at most 256 experts), C order. Bytes, not a tensor:
    compact through Ray and readable without torch."""

    ids: bytes
    layers: int
    top_k: int

    def __post_init__(self) -> None:
        if len(self.ids) % (self.layers * self.top_k):
            raise ValueError(f"routed expert ids: {len(self.ids)} bytes are not whole tokens of "
                             f"{self.layers} layers x top-{self.top_k}")

    @property
    def tokens(self) -> int:
        return len(self.ids) // (self.layers * self.top_k)


@dataclass
class Completion:
    """One sampled response as an engine returns it."""

    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the sampling policy
    finish_reason: FinishReason
    policy_version: int = 0  # the engine's weight version when it sampled
    # MoE engines that record routing (the built-in sampler): the experts of every token the engine ran,
    # i.e. the prompt and all response tokens but the last (never fed back); None when not recorded.
    routed_experts: RoutedExperts | None = None


@dataclass
class Sample:
    """One response to one prompt, with everything the learner and the logs need."""

    sample_id: str
    group_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    behaviour_logprobs: list[float]  # per response token, from the engine that sampled
    finish_reason: FinishReason
    policy_version: int
    prompt_text: str = ""
    response_text: str = ""
    # Per response token: 1 = trained on, 0 = masked (tool / environment output).
    loss_mask: list[int] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # task row (answer, instance id, ...)
    reward: float | None = None
    reward_details: dict[str, Any] = field(default_factory=dict)
    reward_error: str | None = None  # set when scoring failed; the sample is then masked
    advantage: float = 0.0
    # Partial rollouts: (policy version, token count) of each run of response tokens sampled by one
    # version, in order. Empty: every token was sampled by `policy_version`. With spans,
    # `policy_version` is the oldest span's version: staleness is measured by the oldest token.
    version_spans: list[tuple[int, int]] = field(default_factory=list)
    # The experts the sampler routed prompt + response[:-1] to (`Completion.routed_experts`), or a prefix
    # of them (an agent episode's closing observation was never run); None: not recorded (a dense
    # model, vLLM). The learner routes the tokens past the record itself.
    routed_experts: RoutedExperts | None = None

    def __post_init__(self) -> None:
        if not self.loss_mask:
            self.loss_mask = [1] * len(self.response_ids)
        if not (len(self.response_ids) == len(self.behaviour_logprobs) == len(self.loss_mask)):
            raise ValueError(
                f"sample {self.sample_id}: response_ids ({len(self.response_ids)}), "
                f"behaviour_logprobs ({len(self.behaviour_logprobs)}) and loss_mask "
                f"({len(self.loss_mask)}) must have the same length"
            )
        if self.version_spans:
            self.set_version_spans(self.version_spans)
        routed = len(self.prompt_ids) + len(self.response_ids) - 1
        if self.routed_experts is not None and self.routed_experts.tokens > routed:
            raise ValueError(f"sample {self.sample_id}: routed_experts cover {self.routed_experts.tokens} tokens, "
                             f"more than prompt + response - 1 = {routed}")

    def set_version_spans(self, spans: list[tuple[int, int]]) -> None:
        """Record which version sampled which tokens; `policy_version` becomes the oldest."""
        if sum(n for _, n in spans) != len(self.response_ids):
            raise ValueError(f"sample {self.sample_id}: version_spans {spans} cover "
                             f"{sum(n for _, n in spans)} tokens, the response has {len(self.response_ids)}")
        self.version_spans = [tuple(span) for span in spans]
        self.policy_version = min(v for v, _ in spans)

    @property
    def trainable(self) -> bool:
        """False when scoring failed: the sample is kept and counted, never trained on."""
        return self.reward_error is None and self.reward is not None and math.isfinite(self.reward)


@dataclass
class Group:
    """The G samples of one prompt; advantages are computed within a group."""

    group_id: str
    samples: list[Sample]

    @property
    def rewards(self) -> list[float]:
        return [s.reward if s.trainable else float("nan") for s in self.samples]

    @property
    def policy_version(self) -> int:
        """The oldest version that sampled any of its samples."""
        return min(s.policy_version for s in self.samples)

"""Partial rollouts: one generate call's responses, sampled in segments across weight versions.

With `rollout.partial_rollouts` the rollout source asks an engine for at most
`partial_segment_tokens` tokens at a time. Responses that stopped (EOS, repetition)
or reached `max_new_tokens` are done; the others go back to the engine as
prompt + tokens so far, one sample each. A weight push that arrived meanwhile sits
in the engine's call queue before that continuation, so the rest of the response is
sampled by the new version, while the tokens already sampled keep the behaviour
log-probs of the version that sampled them (CISPO's IS weights correct per token).

All unfinished responses of a call have the same length (each segment adds exactly
its cap unless the response stopped), so one continuation call serves them all.
The engine applies M1's repetition early stop to each segment, so a repetitive run
that straddles a segment boundary is seen only from the boundary on.

Routing (MoE engines that record it): a continuation prefills prompt + tokens so far, so
its last segment's record covers the whole response; that one is kept, since its routing
of the earlier tokens is what the later tokens' states were computed from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cispo.types import Completion, RoutedExperts, SamplingParams


@dataclass
class _Response:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    spans: list[tuple[int, int]] = field(default_factory=list)  # (policy version, tokens), in order
    routed_experts: RoutedExperts | None = None  # the last segment's: prompt + every token but the last

    def extend(self, segment: Completion) -> None:
        self.token_ids += segment.token_ids
        self.logprobs += segment.logprobs
        self.finish_reason = segment.finish_reason
        self.routed_experts = segment.routed_experts
        if self.spans and self.spans[-1][0] == segment.policy_version:
            self.spans[-1] = (segment.policy_version, self.spans[-1][1] + len(segment.token_ids))
        else:
            self.spans.append((segment.policy_version, len(segment.token_ids)))


class PartialResponses:
    """The responses of one call's prompts (`n` each), grown a segment at a time."""

    def __init__(self, prompt_ids: list[list[int]], params: SamplingParams, segment_tokens: int):
        self.prompt_ids, self.params, self.segment_tokens = prompt_ids, params, segment_tokens
        self.responses = [[_Response() for _ in range(params.n)] for _ in prompt_ids]
        self._pending: list[tuple[int, int]] = []  # (prompt, sample) the last continuation call extends

    def first_segment(self) -> tuple[list[list[int]], SamplingParams]:
        """The prompts and parameters of the first call: every prompt, n samples each, one segment."""
        return self.prompt_ids, replace(self.params, max_tokens=min(self.segment_tokens, self.params.max_tokens))

    def add(self, completions: list[list[Completion]]) -> None:
        """The result of the last call: n per prompt for the first, one per unfinished response after."""
        if not self._pending:  # nothing pending: this is the first call's result
            for responses, segments in zip(self.responses, completions):
                for response, segment in zip(responses, segments):
                    response.extend(segment)
        else:
            for (p, k), (segment,) in zip(self._pending, completions):
                self.responses[p][k].extend(segment)
        self._pending = [(p, k) for p, responses in enumerate(self.responses) for k, r in enumerate(responses)
                         if r.finish_reason == "length" and len(r.token_ids) < self.params.max_tokens]

    def continuation(self) -> tuple[list[list[int]], SamplingParams] | None:
        """The next call: prompt + tokens so far of each unfinished response, one sample each; None when done."""
        if not self._pending:
            return None
        done = len(self.responses[self._pending[0][0]][self._pending[0][1]].token_ids)
        prompts = [self.prompt_ids[p] + self.responses[p][k].token_ids for p, k in self._pending]
        return prompts, replace(self.params, n=1, max_tokens=min(self.segment_tokens, self.params.max_tokens - done))

    def completions(self) -> list[list[Completion]]:
        """The finished responses, each with the oldest version that sampled any of its tokens."""
        return [[Completion(r.token_ids, r.logprobs, r.finish_reason, min(v for v, _ in r.spans), r.routed_experts)
                 for r in responses] for responses in self.responses]

    def spans(self) -> list[list[list[tuple[int, int]]]]:
        return [[r.spans for r in responses] for responses in self.responses]

"""A scripted policy for environment tests: fixed turns instead of a model's samples."""

from __future__ import annotations

from cispo.types import Completion


class Turns:
    """A scripted policy: fixed turns, log-prob -0.5 per token; it keeps what it sampled."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tok, self.turns, self.sampled = tokenizer, list(turns), []

    def generate(self, prompts, params):
        ids = self.tok.encode(self.turns.pop(0), add_special_tokens=False)
        self.sampled.append(ids)
        return [[Completion(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason="stop", policy_version=0)]]

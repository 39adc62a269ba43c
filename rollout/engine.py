"""The contract every rollout engine meets: the vLLM worker and the built-in sampler alike.

The rollout manager and the environments' agent loop talk to engines only through
this Protocol, so an engine can be swapped by config.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import torch

from cispo.types import Completion, SamplingParams


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """Sample `params.n` completions per prompt (token ids in, token ids out).

        Returns one list per prompt, each with `params.n` `Completion`s carrying the
        log-prob of every sampled token and the engine's policy version.
        """
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new weights (HF parameter names) in place and set the policy version."""
        ...

    def policy_version(self) -> int:
        """The version of the weights the engine samples with now."""
        ...

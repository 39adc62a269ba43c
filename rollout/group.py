"""The rollout engines of a job as Ray actors: fan prompts out, push weights to all.

Engines are interchangeable (vLLM or the built-in sampler); each is created from
an HF checkpoint directory and then kept in step with the learner by in-memory
weight pushes, each tagged with the policy version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray

from cispo.types import Completion, SamplingParams


class WeightPushError(RuntimeError):
    pass


class RolloutError(RuntimeError):
    pass


@dataclass
class EngineSpec:
    """How to (re)start one engine actor."""

    engine: str  # "vllm" | "builtin"
    model_dir: str
    num_cpus: float
    num_gpus: float
    kwargs: dict[str, Any]
    seed: int = 0  # engine i samples with seed + i


def _engine_class(engine: str):
    if engine == "vllm":
        from cispo.rollout.vllm_worker import VLLMWorker

        return VLLMWorker
    from cispo.rollout.builtin_worker import BuiltinSamplerWorker

    return BuiltinSamplerWorker


class RolloutGroup:
    def __init__(self, spec: EngineSpec, num_workers: int, generate_timeout_s: float, push_timeout_s: float,
                 start_timeout_s: float = 600.0):
        self.spec, self.generate_timeout_s, self.push_timeout_s = spec, generate_timeout_s, push_timeout_s
        self._actor = ray.remote(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus)(_engine_class(spec.engine))
        self.workers = [self._start(seed=spec.seed + i) for i in range(num_workers)]
        ray.get([w.policy_version.remote() for w in self.workers], timeout=start_timeout_s)

    def _start(self, seed: int):
        return self._actor.remote(self.spec.model_dir, seed, **self.spec.kwargs)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """Completions for every prompt, in order, spread over the engines."""
        n = len(self.workers)
        parts = [list(range(i, len(prompts), n)) for i in range(n)]
        refs = [w.generate.remote([prompts[j] for j in part], params)
                for w, part in zip(self.workers, parts) if part]
        try:
            results = ray.get(refs, timeout=self.generate_timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            raise RolloutError(f"generation did not finish within rollout.generate_timeout_s="
                               f"{self.generate_timeout_s:g} s") from e
        out: list[list[Completion]] = [[] for _ in prompts]
        for part, result in zip([p for p in parts if p], results):
            for j, completions in zip(part, result):
                out[j] = completions
        return out

    def push_weights(self, weights_ref: ray.ObjectRef, version: int) -> float:
        """Load the learner's weights into every engine; seconds taken. Fails loudly past the timeout."""
        start = time.perf_counter()
        refs = [w.update_weights.remote(weights_ref, version) for w in self.workers]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.push_timeout_s)
        if pending:
            raise WeightPushError(
                f"weight push of version {version} to {len(pending)}/{len(refs)} rollout engines did not finish "
                f"within rollout.weight_push_timeout_s={self.push_timeout_s:g} s")
        ray.get(ready)  # re-raises an engine's own error
        versions = ray.get([w.policy_version.remote() for w in self.workers])
        if any(v != version for v in versions):
            raise WeightPushError(f"engines report versions {versions} after pushing version {version}")
        return time.perf_counter() - start

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)

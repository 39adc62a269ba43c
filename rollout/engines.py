"""The rollout engines of a job as Ray actors: calls to one engine, fanned-out generation, weight pushes.

Engines are interchangeable (vLLM or the built-in sampler); each is created from
an HF checkpoint directory and then kept in step with the learner by in-memory
weight pushes, each tagged with the policy version.

An engine actor that dies (its process killed, its node lost) is replaced by a new
one from the same `EngineSpec`, which gets the last pushed weights and version
before it takes work; the prompts the dead engine held are issued again to it.
Replacements are counted (`restarts`); past `max_restarts` the job fails with
`RolloutError`. Every generate call goes through `submit` and `result`, which is where
a dead engine is replaced and its call issued again, for `generate` and the rollout
source alike. Several threads may use the group (the rollout source generates
while the driver pushes weights): the handles and the last push are read and
swapped under one lock, and an engine is replaced only if it is still the handle
that failed, so two calls that saw it die replace it once.

That is the disaggregated layout (`EngineGroup`). In the colocated one
(`rollout.colocate`, `cispo.learner.colocated`) each learner rank holds an engine in
its own process; both meet the `Engines` interface the rollout source uses.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
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
    # Custom Ray resources each engine actor requires, e.g. {"rollout_node": 1}: node placement.
    resources: dict[str, float] = field(default_factory=dict)


def engine_class(engine: str):
    """The class of a rollout engine: the body of an engine actor, or of a learner rank's colocated engine."""
    if engine == "vllm":
        from cispo.rollout.vllm_worker import VLLMWorker

        return VLLMWorker
    from cispo.rollout.builtin_worker import BuiltinSamplerWorker

    return BuiltinSamplerWorker


@dataclass
class EngineCall:
    """One generate call on engine `index`; `worker` and `ref` change when it is issued again."""

    index: int
    prompts: list[list[int]]
    params: SamplingParams
    worker: Any = None  # the engine actor it went to
    ref: Any = None  # its ray.ObjectRef


class Engines(ABC):
    """What the rollout source, the agent episodes and the job use of a job's engines: calls to engine
    `index`, generation fanned out over all of them, and the policy version they hold. `workers` are
    the engines' actor handles (each with `generate`, `update_weights`, `policy_version`); subclasses
    say how they are started, how new weights reach them and what happens when one dies (`replace`)."""

    workers: list
    generate_timeout_s: float
    _lock: threading.Lock  # guards workers

    restarts: int  # engines replaced after they died

    @property
    @abstractmethod
    def version(self) -> int:
        """The policy version the engines hold."""

    @abstractmethod
    def replace(self, index: int, failed, error: BaseException) -> None:
        """Engine `index`, whose handle `failed` died, is dealt with: replaced, or the job fails."""

    def submit(self, index: int, prompts: list[list[int]], params: SamplingParams) -> EngineCall:
        """A generate call on engine `index`, issued now."""
        call = EngineCall(index, prompts, params)
        self._issue(call)
        return call

    def _issue(self, call: EngineCall) -> None:
        call.worker = self.worker(call.index)
        call.ref = call.worker.generate.remote(call.prompts, call.params)

    def result(self, call: EngineCall) -> list[list[Completion]] | None:
        """The completions of a finished call, or None when its engine had died: the call is then
        issued again to the replacement (with the last pushed weights) and `call.ref` is the new one."""
        try:
            return ray.get(call.ref)
        except ray.exceptions.RayActorError as e:
            self.replace(call.index, call.worker, e)
            self._issue(call)
            return None

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """Completions for every prompt, in order, spread over the engines."""
        n = len(self.workers)
        parts = {i: list(range(i, len(prompts), n)) for i in range(n)}
        calls = [self.submit(i, [prompts[j] for j in part], params) for i, part in parts.items() if part]
        deadline = time.monotonic() + self.generate_timeout_s
        out: list[list[Completion]] = [[] for _ in prompts]
        while calls:
            done, _ = ray.wait([c.ref for c in calls], num_returns=1,
                               timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise RolloutError(f"generation did not finish within rollout.generate_timeout_s="
                                   f"{self.generate_timeout_s:g} s")
            call = next(c for c in calls if c.ref == done[0])
            result = self.result(call)
            if result is None:
                continue  # issued again to the dead engine's replacement
            calls.remove(call)
            for j, completions in zip(parts[call.index], result):
                out[j] = completions
        return out

    def worker(self, index: int):
        """Engine `index`'s current actor handle (a replacement, once the first died)."""
        with self._lock:
            return self.workers[index]


class EngineGroup(Engines):
    """Engine actors of their own (the disaggregated layout): weights arrive through Ray's object
    store, and a dead engine is replaced (see the module docstring)."""

    def __init__(self, spec: EngineSpec, num_workers: int, generate_timeout_s: float, push_timeout_s: float,
                 start_timeout_s: float = 600.0, max_restarts: int = 0):
        self.spec, self.generate_timeout_s, self.push_timeout_s = spec, generate_timeout_s, push_timeout_s
        self.start_timeout_s, self.max_restarts = start_timeout_s, max_restarts
        self._actor = ray.remote(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus,
                                 resources=spec.resources or None)(engine_class(spec.engine))
        self.workers = [self._start(seed=spec.seed + i) for i in range(num_workers)]
        try:
            ray.get([w.policy_version.remote() for w in self.workers], timeout=start_timeout_s)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            self.shutdown()
            raise RolloutError(f"{num_workers} rollout engines did not start: {self._start_failure(e)}") from e
        self.restarts = 0  # engine actors replaced after they died
        # What a replacement engine loads before it takes work: the last push (None: the spec's checkpoint).
        self._weights: tuple[ray.ObjectRef, int] | None = None
        self._lock = threading.Lock()  # guards workers, _weights and restarts

    @property
    def version(self) -> int:
        """The policy version last pushed to the engines (0 before any push)."""
        with self._lock:
            return self._weights[1] if self._weights is not None else 0

    def _start(self, seed: int):
        return self._actor.remote(self.spec.model_dir, seed, **self.spec.kwargs)

    def _start_failure(self, error: BaseException) -> str:
        """Why engines did not start, for the error a user sees."""
        if isinstance(error, ray.exceptions.GetTimeoutError):
            return (f"not ready within {self.start_timeout_s:g} s: no node with free CPU {self.spec.num_cpus:g}, "
                    f"GPU {self.spec.num_gpus:g} and resources {self.spec.resources}?")
        return f"an engine died while loading {self.spec.model_dir}: {error}"

    def replace(self, index: int, failed, error: BaseException) -> None:
        """Start a new engine in place of engine `index`, whose handle `failed` died, holding the last
        pushed weights and version. Nothing to do if another call replaced it already."""
        with self._lock:
            if self.workers[index] is failed:
                self._replace(index, error)

    def _replace(self, index: int, error: BaseException) -> None:
        if self.restarts >= self.max_restarts:
            raise RolloutError(f"rollout engine {index} died and rollout.max_restarts={self.max_restarts} "
                               f"engine restarts are used up: {error}") from error
        self.restarts += 1
        ray.kill(self.workers[index])
        worker = self._start(seed=self.spec.seed + index)
        try:
            ray.get(worker.policy_version.remote(), timeout=self.start_timeout_s)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            ray.kill(worker)
            raise RolloutError(f"the replacement of dead rollout engine {index} did not start: "
                               f"{self._start_failure(e)}") from e
        if self._weights is not None:
            weights_ref, version = self._weights
            ray.get(worker.update_weights.remote(weights_ref, version), timeout=self.push_timeout_s)
        self.workers[index] = worker

    def push_weights(self, weights_ref: ray.ObjectRef, version: int) -> None:
        """Load the learner's weights into every engine. Fails loudly past the timeout.

        An engine found dead is replaced; the replacement loads these weights as it starts."""
        with self._lock:  # a replacement started after this loads these weights
            self._weights = (weights_ref, version)
            workers = list(self.workers)
        refs = [w.update_weights.remote(weights_ref, version) for w in workers]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.push_timeout_s)
        if pending:
            raise WeightPushError(
                f"weight push of version {version} to {len(pending)}/{len(refs)} rollout engines did not finish "
                f"within rollout.weight_push_timeout_s={self.push_timeout_s:g} s")
        for i, (worker, ref) in enumerate(zip(workers, refs)):
            try:
                ray.get(ref)  # re-raises an engine's own error
            except ray.exceptions.RayActorError as e:
                self.replace(i, worker, e)
        versions = ray.get([w.policy_version.remote() for w in self.workers])
        if any(v != version for v in versions):
            raise WeightPushError(f"engines report versions {versions} after pushing version {version}")

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)

"""Rollout engines inside the learner ranks' processes (`rollout.colocate=true`), verl's layout.

Each learner rank holds one engine (vLLM or the built-in sampler) in its own process
and generates its share of a step's prompts. The learner and the engine take turns on
the rank's devices: on a CPU node both use all its cores, on a GPU vLLM sleeps while
the learner steps. New weights go from the rank's tensors into its engine in memory,
with nothing through Ray's object store. An engine dies with its rank, so there is
nothing to replace: the job's supervisor restarts the job from its last checkpoint
(`LearnerDiedError`), as for any learner death.
"""

from __future__ import annotations

import threading

from cispo.learner.group import LearnerDiedError, LearnerGroup
from cispo.rollout.engines import Engines, EngineSpec


class ColocatedEngines(Engines):
    def __init__(self, learner: LearnerGroup, spec: EngineSpec, generate_timeout_s: float):
        """One engine per learner rank, started from `spec.model_dir` (the learner's own starting weights)."""
        self.learner, self.workers, self.generate_timeout_s = learner, list(learner.ranks), generate_timeout_s
        self.restarts = 0  # never: an engine's death is its learner rank's
        self._lock = threading.Lock()
        self._version = 0
        learner.host_engines(spec)

    @property
    def version(self) -> int:
        return self._version

    def replace(self, index: int, failed, error: BaseException) -> None:
        raise LearnerDiedError(f"learner rank {index} died with the rollout engine it holds: {error}") from error

    def push_weights(self, version: int) -> None:
        """Every rank's engine takes that rank's weights, in memory, as policy `version` (the job times it)."""
        self.learner.update_engines(version)
        self._version = version

    def shutdown(self) -> None:
        """Nothing of its own to stop: the engines go with the learner ranks."""

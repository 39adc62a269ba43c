"""Multi-turn episodes as one more kind of group on the rollout path.

An episode (an agent working in a sandbox) samples one turn at a time. Each turn is a
generate call on one engine, so a weight push queues between turns like any other
call, and the turns of one episode may be sampled by different versions; the sample's
`policy_version` is its oldest turn's, so the staleness rule holds for every token.

`Episodes` runs a group's episodes on a thread pool of `in_flight` threads (each
episode blocks on its engine call, then on its tools), spread over the engines, and
hands the finished group to `done`. `play(prompt, policy, sample_id, group_id)` is the
environment's side: it returns a scored `Sample` (an episode is graded where it ran).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Protocol

import ray

from cispo.rollout.engines import EngineGroup, RolloutError
from cispo.rollout.timeline import Timeline
from cispo.types import Completion, Group, Sample, SamplingParams


class EpisodesStopped(RuntimeError):
    """The source is stopping: an episode's next turn is not sampled."""


class EngineTurns:
    """The policy an episode samples its turns from: one engine of the group, each turn within the
    generate deadline, and sent again to the replacement if the engine died."""

    def __init__(self, engines: EngineGroup, index: int, timeout_s: float, stopping: threading.Event):
        self.engines, self.index, self.timeout_s, self.stopping = engines, index, timeout_s, stopping

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if self.stopping.is_set():
            raise EpisodesStopped("the rollout source is stopping")
        call = self.engines.submit(self.index, prompts, params)
        deadline = time.monotonic() + self.timeout_s
        while True:
            ready, _ = ray.wait([call.ref], timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RolloutError(f"an episode's turn did not finish within rollout.generate_timeout_s="
                                   f"{self.timeout_s:g} s (engine {self.index})")
            completions = self.engines.result(call)
            if completions is not None:
                return completions


class Play(Protocol):
    def __call__(self, prompt, policy: EngineTurns, sample_id: str, group_id: str) -> Sample: ...


class Episodes:
    def __init__(self, engines: EngineGroup, play: Play, in_flight: int, timeout_s: float, timeline: Timeline):
        self.engines, self.play, self.timeout_s, self.timeline = engines, play, timeout_s, timeline
        self.stopping = threading.Event()
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix="episode")
        self._engines = itertools.cycle(range(len(engines.workers)))
        self._lock = threading.Lock()

    def start_group(self, prompt, group_size: int, done: Callable[[Group], None],
                    failed: Callable[[BaseException], None]) -> None:
        """Play `group_size` episodes of `prompt`; `done(group)` once all are scored, or `failed(error)`."""
        group_id = uuid.uuid4().hex[:12]
        with self._lock:
            engines = [next(self._engines) for _ in range(group_size)]
        futures = [self._pool.submit(self._play_one, prompt, engine, f"{group_id}-{k}", group_id)
                   for k, engine in enumerate(engines)]
        remaining = [len(futures)]
        counter = threading.Lock()

        def finished(_: Future) -> None:
            with counter:
                remaining[0] -= 1
                if remaining[0]:
                    return
            if any(f.cancelled() for f in futures):
                return  # the source stopped before this group started
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                if not isinstance(errors[0], EpisodesStopped):
                    failed(errors[0])
                return
            done(Group(group_id, [f.result() for f in futures]))

        for future in futures:
            future.add_done_callback(finished)

    def _play_one(self, prompt, engine: int, sample_id: str, group_id: str) -> Sample:
        start = time.perf_counter()
        sample = self.play(prompt, EngineTurns(self.engines, engine, self.timeout_s, self.stopping), sample_id,
                           group_id)
        self.timeline.record("episode", start, time.perf_counter(), f"episodes on engine {engine}")
        return sample

    def stop(self) -> None:
        """Episodes stop before their next turn; the unstarted ones never start."""
        self.stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

"""Multi-turn episodes as one more kind of group on the rollout path.

An episode (an agent working in a sandbox) samples one turn at a time. Each turn goes to
one engine, in a generate call with the turns other episodes asked for meanwhile
(`EngineTurns`), so a weight push queues between turns like any other call, and the
turns of one episode may be sampled by different versions; the sample's
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
from dataclasses import dataclass
from typing import Callable, Protocol

import ray

from cispo.rollout.engines import Engines, RolloutError
from cispo.rollout.timeline import Timeline
from cispo.types import Completion, Group, Sample, SamplingParams


class EpisodesStopped(RuntimeError):
    """The source is stopping: an episode's next turn is not sampled."""


@dataclass(eq=False)
class _Turn:
    """One episode's generate request: waiting to be sent, in flight, then answered."""

    prompts: list[list[int]]
    params: SamplingParams
    deadline: float  # time.monotonic() by which it must be answered
    completions: list[list[Completion]] | None = None
    error: BaseException | None = None

    @property
    def answered(self) -> bool:
        return self.completions is not None or self.error is not None


class EngineTurns:
    """The policy the episodes on one engine sample their turns from, each turn within the generate
    deadline (counted from when the episode asked) and sent again to the replacement if the engine died.

    Turns are batched while the engine is busy: a turn asked for while none of these episodes' calls is
    in flight goes out at once; turns asked for meanwhile wait and go out together when it returns, one
    call per distinct `SamplingParams` (so each turn is sampled with exactly its own). An engine runs
    one call at a time but samples a batch for about the cost of one prompt, so this is what lets
    episodes in flight overlap their sampling. No extra thread: the episode whose turn finds the engine
    free sends the batch its turn is in and answers every turn of it."""

    def __init__(self, engines: Engines, index: int, timeout_s: float, stopping: threading.Event):
        self.engines, self.index, self.timeout_s, self.stopping = engines, index, timeout_s, stopping
        self._cond = threading.Condition()
        self._waiting: list[_Turn] = []  # asked for, not yet sent
        self._busy = False  # a batch of these turns is in flight

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        turn = _Turn(prompts, params, time.monotonic() + self.timeout_s)
        with self._cond:
            self._waiting.append(turn)
            while True:
                if turn.answered:
                    return self._answer(turn)
                if turn in self._waiting:
                    if self.stopping.is_set():
                        self._waiting.remove(turn)
                        raise EpisodesStopped("the rollout source is stopping")
                    if not self._busy:
                        self._busy = True
                        batch, self._waiting = self._waiting, []
                        break
                    if time.monotonic() >= turn.deadline:
                        self._waiting.remove(turn)
                        raise self._late()
                    self._cond.wait(max(0.0, turn.deadline - time.monotonic()))
                else:
                    self._cond.wait()  # in another episode's batch, which answers it
        try:
            self._send(batch, own=params)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        return self._answer(turn)

    def stop(self) -> None:
        """Turns waiting to be sent raise `EpisodesStopped`; those in flight are still answered."""
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()

    def _send(self, batch: list[_Turn], own: SamplingParams) -> None:
        """One call per distinct params, all issued at once (the engine runs them in order), the
        sender's `own` last so that the other episodes are answered first; every turn of the batch
        gets its completions or the error."""
        groups: dict[SamplingParams, list[_Turn]] = {}
        for turn in batch:
            groups.setdefault(turn.params, []).append(turn)
        try:
            calls = [(self.engines.submit(self.index, [p for t in turns for p in t.prompts], params), turns)
                     for params, turns in sorted(groups.items(), key=lambda group: group[0] == own)]
            while calls:
                deadline = min(t.deadline for _, turns in calls for t in turns)
                ready, _ = ray.wait([call.ref for call, _ in calls], num_returns=1,
                                    timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise self._late()
                i = next(i for i, (call, _) in enumerate(calls) if call.ref == ready[0])
                call, turns = calls[i]
                completions = self.engines.result(call)
                if completions is None:
                    continue  # its engine died: issued again to the replacement
                del calls[i]
                with self._cond:
                    for turn in turns:  # the call's prompts are its turns' prompts, in order
                        n = len(turn.prompts)
                        turn.completions, completions = completions[:n], completions[n:]
                    self._cond.notify_all()
        except BaseException as e:  # the turns not yet answered fail with it (the job fails)
            with self._cond:
                for turn in batch:
                    if not turn.answered:
                        turn.error = e

    def _late(self) -> RolloutError:
        return RolloutError(f"an episode's turn did not finish within rollout.generate_timeout_s={self.timeout_s:g} s "
                            f"(engine {self.index})")

    @staticmethod
    def _answer(turn: _Turn) -> list[list[Completion]]:
        if turn.error is not None:
            raise turn.error
        return turn.completions


class Play(Protocol):
    def __call__(self, prompt, policy: EngineTurns, sample_id: str, group_id: str) -> Sample: ...


class Episodes:
    def __init__(self, engines: Engines, play: Play, in_flight: int, timeout_s: float, timeline: Timeline):
        self.play, self.timeline = play, timeline
        self.stopping = threading.Event()
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix="episode")
        self._engines = itertools.cycle(range(len(engines.workers)))
        self.turns = [EngineTurns(engines, i, timeout_s, self.stopping) for i in range(len(engines.workers))]
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
        sample = self.play(prompt, self.turns[engine], sample_id, group_id)
        self.timeline.record("episode", start, time.perf_counter(), f"episodes on engine {engine}")
        return sample

    def stop(self) -> None:
        """Episodes stop before their next turn; the unstarted ones never start."""
        for turns in self.turns:
            turns.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

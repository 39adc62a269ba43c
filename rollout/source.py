"""The rollout source both drivers pull trainable groups from.

Prompts go out to the engines as generate calls; each finished call's groups go to a
scoring thread and from there into the `RolloutBuffer`, whose staleness rule decides
how many prompts may be in flight, which groups a learner step takes and which are
re-issued. The drivers differ only in `max_staleness`:

- 0 (synchronous): nothing is issued while the learner trains; `take(step)` issues the
  step's prompts, one call per engine (nothing overlaps, so the biggest batch wins),
  and waits for them.
- N >= 1 (asynchronous): `refill` issues ahead, so the engines generate the next groups
  while the learner trains. Each engine's share of a step is split into
  `CALLS_PER_ENGINE_PER_STEP` calls, so scoring one call overlaps generating the next.

An engine actor runs one call at a time, in the order it received them, so a weight
push queues behind the generation already issued and every call issued after the push
samples with the new weights; `Completion.policy_version` records the version that
actually sampled. A call whose engine died goes again to its replacement
(`Engines.result`).

With partial rollouts (`segment_tokens`) a call's responses are sampled a segment at a
time and continued under whatever weights the engine holds by then
(`PartialResponses`); the call's groups go to scoring once every response is finished.

Dynamic sampling: groups the `keep` predicate refuses (DAPO: all rewards equal) are
consumed without training and counted; their prompts are replaced by fresh ones. After
`max_dropped` of them while one step waits, the step trains on the groups it has, or
fails when it has none.

Multi-turn episodes (`episodes`, an agent in a sandbox) take the place of generate
calls and scoring: each issued prompt starts a group of episodes, which sample their
turns from the engines and come back scored (`cispo.rollout.episodes`).

Every generate, score, episode, learn and push span goes on the `Timeline`.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import ray

from cispo.rollout.buffer import RolloutBuffer, StepTake
from cispo.rollout.engines import EngineCall, Engines, RolloutError
from cispo.rollout.episodes import Episodes, Play
from cispo.rollout.partial import PartialResponses
from cispo.rollout.timeline import Timeline
from cispo.types import Completion, Group, Sample, SamplingParams

# Asynchronous: each engine's share of a step is split into this many generate calls, so
# scoring of one call overlaps generation of the next. More calls shorten the scoring tail
# a step waits for; fewer give the engine bigger batches.
CALLS_PER_ENGINE_PER_STEP = 4
# Prompts skipped (too long) while one step waits, in steps' worth, before the source gives up:
# then nearly every prompt is too long, and skipping on would hang the job.
MAX_SKIPPED_STEPS = 100


@dataclass
class Prompt:
    """A task row as the source needs it: its tokens, its text for the logs and the reward,
    and the row's metadata for the reward."""

    ids: list[int]
    text: str
    metadata: dict[str, Any]


@dataclass
class _Call:
    engine_call: EngineCall  # the engine call in flight (with partial rollouts, its latest segment)
    prompt_indices: list[int]
    prompts: list[Prompt]
    issued_at: float
    min_version: int  # the version pushed before the call was issued: it samples with this or newer
    partial: PartialResponses | None = None  # partial rollouts: the responses so far


def to_group(prompt: Prompt, completions: list[Completion], decode: Callable[[list[int]], str]) -> Group:
    group_id = uuid.uuid4().hex[:12]
    samples = [
        Sample(sample_id=f"{group_id}-{k}", group_id=group_id, prompt_ids=prompt.ids,
               response_ids=c.token_ids, behaviour_logprobs=c.logprobs, finish_reason=c.finish_reason,
               policy_version=c.policy_version, prompt_text=prompt.text,
               response_text=decode(c.token_ids), metadata=prompt.metadata, routed_experts=c.routed_experts)
        for k, c in enumerate(completions)
    ]
    return Group(group_id, samples)


class RolloutSource:
    def __init__(self, engines: Engines, buffer: RolloutBuffer, prompt: Callable[[int], Prompt | None],
                 decode: Callable[[list[int]], str], score: Callable[[list[Sample]], Any],
                 params: SamplingParams, *, generate_timeout_s: float, scoring_calls_in_flight: int,
                 segment_tokens: int = 0, keep: Callable[[Group], bool] | None = None, max_dropped: int = 0,
                 play: Play | None = None, episodes_in_flight: int = 1):
        """`prompt(i)`: training prompt i of the task's stream, or None to skip it (it does not fit the
        model; the buffer counts it). `score(samples)` fills their rewards.
        `params`: the sampling parameters of calls issued from now on (the curriculum changes
        `max_tokens`). `segment_tokens` > 0: partial rollouts. `keep`: dynamic sampling's filter.
        `play`: each prompt is a group of `params.n` episodes played by it, `episodes_in_flight` at once."""
        self.engines, self.buffer, self.prompt, self.decode, self.score = engines, buffer, prompt, decode, score
        self.params, self.generate_timeout_s, self.segment_tokens = params, generate_timeout_s, segment_tokens
        self.keep, self.max_dropped = keep, max_dropped
        calls_per_engine = 1 if buffer.max_staleness == 0 else CALLS_PER_ENGINE_PER_STEP
        self.call_size = max(1, math.ceil(buffer.prompts_per_step / (len(engines.workers) * calls_per_engine)))
        self._calls: list[_Call] = []
        self._next_engine = 0
        self._engine_free_at = [0.0] * len(engines.workers)  # when each engine's last call finished
        self._cond = threading.Condition(threading.RLock())
        self._error: BaseException | None = None
        self._stopping = False
        self.timeline = Timeline()
        self.episodes = Episodes(engines, play, episodes_in_flight, generate_timeout_s, self.timeline) if play else None
        self._scoring = ThreadPoolExecutor(scoring_calls_in_flight, thread_name_prefix="rollout-scoring")
        # Since the last `timings()`: engine-seconds spent generating (a call queued behind
        # another counts from when that one finished, weight pushes between them included, so
        # this is an upper bound) and scoring-call seconds (summed: calls overlap).
        self.generate_s = self.reward_s = 0.0
        self._thread = threading.Thread(target=self._collect, name="rollout-collector", daemon=True)
        self._thread.start()

    def refill(self, steps_taken: int) -> None:
        """Issue every prompt the staleness rule allows now; the engines start on them at once."""
        with self._cond:
            indices, prompts = [], []
            for i in self.buffer.issue(self.buffer.allowed(self.engines.version, steps_taken)):
                prompt = self.prompt(i)
                if prompt is None:
                    self.buffer.skip(i)  # the next refill issues another in its place
                elif self.episodes is not None:
                    self.episodes.start_group(prompt, self.params.n, lambda group, i=i: self._finished(i, group),
                                              self._fail)
                else:
                    indices.append(i)
                    prompts.append(prompt)
            for start in range(0, len(indices), self.call_size):
                part, part_prompts = indices[start:start + self.call_size], prompts[start:start + self.call_size]
                engine = self._next_engine % len(self.engines.workers)
                self._next_engine += 1
                ids = [p.ids for p in part_prompts]
                partial = PartialResponses(ids, self.params, self.segment_tokens) if self.segment_tokens else None
                call = _Call(None, part, part_prompts, 0.0, 0, partial)
                self._issue(call, engine, *(partial.first_segment() if partial else (ids, self.params)))
            self._cond.notify_all()

    def _issue(self, call: _Call, engine: int, prompt_ids: list[list[int]], params: SamplingParams) -> None:
        """Send (a segment of) a call to its engine; the collector waits for it."""
        with self._cond:
            call.engine_call = self.engines.submit(engine, prompt_ids, params)
            call.issued_at, call.min_version = time.perf_counter(), self.engines.version
            self._calls.append(call)
            self._cond.notify_all()

    def take(self, step: int) -> StepTake:
        """The groups learner step `step` trains on; issues what the rule allows and waits for them,
        re-issuing any that grew too old."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                # Dynamic sampling gave up on a full step: train on what came back, if anything did.
                exhausted = self.keep is not None and self.buffer.dropped_since_take >= self.max_dropped
                taken = self.buffer.take(step, partial=exhausted and not self.buffer.in_flight)
                if taken is not None:
                    return taken
                if self.buffer.skipped_since_take >= MAX_SKIPPED_STEPS * self.buffer.prompts_per_step:
                    raise RuntimeError(f"{self.buffer.skipped_since_take} prompts were skipped as too long while "
                                       "waiting for one step: raise model.max_position_embeddings, lower "
                                       "rollout.max_new_tokens, or shorten the prompts")
                if exhausted and not self.buffer.in_flight:
                    raise RuntimeError(
                        f"dynamic sampling dropped {self.buffer.dropped_since_take} groups while waiting for one "
                        "step and kept none: every group's rewards were equal. Raise "
                        "algo.dynamic_sampling_max_rounds or turn algo.dynamic_sampling off.")
                if not exhausted:
                    self.refill(step)  # prompts re-issued or dropped while waiting make room (the lock is reentrant)
                self._cond.wait(timeout=1.0)

    def timings(self) -> tuple[float, float]:
        """Generating and scoring seconds since the last call."""
        with self._cond:
            out, self.generate_s, self.reward_s = (self.generate_s, self.reward_s), 0.0, 0.0
        return out

    def stop(self, directory) -> None:
        """Stop collecting and write the timeline into `directory`. Calls still on the engines finish
        there and are ignored; their prompts were never consumed, so a resumed job issues them again."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        if self.episodes is not None:
            self.episodes.stop()
        self._thread.join()
        self._scoring.shutdown(wait=True, cancel_futures=True)
        self.timeline.write(directory)

    def _collect(self) -> None:
        """Background thread: wait for a generate call, hand its groups to a scoring thread."""
        last_progress = time.monotonic()
        try:
            while True:
                with self._cond:
                    while not self._calls and not self._stopping:
                        self._cond.wait()
                        last_progress = time.monotonic()
                    if self._stopping:
                        return
                    refs = [c.engine_call.ref for c in self._calls]
                done, _ = ray.wait(refs, num_returns=1, timeout=0.2)
                if not done:
                    if time.monotonic() - last_progress > self.generate_timeout_s:
                        raise RolloutError(f"no generate call finished within rollout.generate_timeout_s="
                                           f"{self.generate_timeout_s:g} s")
                    continue
                last_progress = time.monotonic()
                with self._cond:
                    call = next(c for c in self._calls if c.engine_call.ref == done[0])
                completions = self.engines.result(call.engine_call)
                if completions is None:
                    continue  # its engine died: the call went again to the replacement (a new ref)
                with self._cond:
                    self._calls.remove(call)
                self._collected(call, completions)
        except BaseException as e:
            self._fail(e)

    def _collected(self, call: _Call, completions: list[list[Completion]]) -> None:
        """A call (or a segment of one) finished: continue it, or hand its groups to scoring."""
        generated = time.perf_counter()
        engine = call.engine_call.index
        with self._cond:
            started = max(call.issued_at, self._engine_free_at[engine])
            self.generate_s += generated - started
            self._engine_free_at[engine] = generated
        self.timeline.record("generate", started, generated, f"engine {engine}")
        sampled_by = min(c.policy_version for cs in completions for c in cs)
        if sampled_by < call.min_version:  # re-issuing would never make such groups fresh
            raise RolloutError(f"an engine sampled with policy version {sampled_by} after version "
                               f"{call.min_version} was pushed to it")
        if call.partial is not None:
            call.partial.add(completions)
            continuation = call.partial.continuation()
            if continuation is not None:
                self._issue(call, engine, *continuation)
                return
            completions = call.partial.completions()
        groups = [to_group(p, c, self.decode) for p, c in zip(call.prompts, completions)]
        if call.partial is not None:
            for group, spans in zip(groups, call.partial.spans()):
                for sample, sample_spans in zip(group.samples, spans):
                    sample.set_version_spans(sample_spans)
        self._scoring.submit(self._score, call.prompt_indices, groups)

    def _score(self, prompt_indices: list[int], groups: list[Group]) -> None:
        """A scoring thread: score one generate call's groups and hand them to the buffer."""
        try:
            start = time.perf_counter()
            self.score([s for g in groups for s in g.samples])
            end = time.perf_counter()
            self.timeline.record("score", start, end, "reward workers")
            with self._cond:
                self.reward_s += end - start
            for index, group in zip(prompt_indices, groups):
                self._finished(index, group)
        except BaseException as e:
            self._fail(e)

    def _finished(self, index: int, group: Group) -> None:
        """A scored group: into the buffer, or dropped by dynamic sampling."""
        with self._cond:
            if self.keep is not None and not self.keep(group):
                self.buffer.drop(index)
            else:
                self.buffer.complete(index, group)
            self._cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        """Hand an error to the driver thread, which raises it from `take`."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

"""The rollout producer of the asynchronous driver: engines and reward workers busy while the learner trains.

The driver thread issues generate calls (`refill`) and weight pushes to the same
engine actors. An engine actor runs one call at a time, in the order it received
them, so a push queues behind the generation already issued and every call issued
after the push samples with the new weights; `Completion.policy_version` records
the version that actually sampled. What overlaps:

- generation of the next groups overlaps the learner step (and the push waits only
  for the generation issued before it, at most max_staleness steps' worth);
- scoring overlaps generation, and scoring calls overlap each other: a background
  thread collects each generate call as soon as it finishes and hands its groups to
  a scoring thread (`rollout.scoring_calls_in_flight` of them; the reward pool spreads
  each call's samples over its workers), so the reward workers always have work
  queued while the engines go on with the calls already issued.

With `rollout.partial_rollouts` a call's responses are sampled a segment at a time
and continued under whatever weights the engine holds by then (`PartialResponses`);
the call's groups go to scoring once every response is finished.

Every generate, score, learn and push span goes on a `Timeline`
(`output_dir/timeline.jsonl`), the profile of how well these overlap.

How many prompts may be in flight is the `RolloutBuffer`'s staleness rule; which
groups a step trains on, and which are re-issued, too.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ray

from cispo.collect import sampling_params, to_group
from cispo.config import Config
from cispo.controls import has_signal
from cispo.job import Job
from cispo.partial_rollout import PartialResponses
from cispo.rollout.group import RolloutError
from cispo.rollout_buffer import RolloutBuffer, StepTake
from cispo.timeline import Timeline
from cispo.types import Group

# Each engine's share of a step is split into this many generate calls, so scoring of
# one call overlaps generation of the next. More calls shorten the scoring tail a
# step waits for; fewer give the engine bigger batches.
CALLS_PER_ENGINE_PER_STEP = 4


@dataclass
class _Call:
    ref: ray.ObjectRef | None  # the engine call in flight (with partial rollouts, its latest segment)
    prompt_indices: list[int]
    rows: list
    prompt_ids: list[list[int]]
    engine: int
    issued_at: float
    min_version: int  # the version pushed before the call was issued: it samples with this or newer
    partial: PartialResponses | None = None  # partial rollouts: the responses so far
    worker: ray.actor.ActorHandle | None = None  # the engine actor the call went to
    segment: tuple | None = None  # (prompt_ids, params) it was issued with, to issue again if that actor dies


class RolloutProducer:
    def __init__(self, cfg: Config, job: Job, buffer: RolloutBuffer):
        self.cfg, self.job, self.buffer = cfg, job, buffer
        self.params = sampling_params(cfg, job.tokenizer.eos_token_id)
        self.call_size = max(1, math.ceil(cfg.rollout.prompts_per_step
                                          / (len(job.rollout.workers) * CALLS_PER_ENGINE_PER_STEP)))
        self._calls: list[_Call] = []
        self._next_engine = 0
        self._engine_free_at = [0.0] * len(job.rollout.workers)  # when each engine's last call finished
        self._cond = threading.Condition(threading.RLock())
        self._error: BaseException | None = None
        self._stopping = False
        self.timeline = Timeline()
        self._scoring = ThreadPoolExecutor(cfg.rollout.scoring_calls_in_flight, thread_name_prefix="rollout-scoring")
        # Since the last `timings()`: engine-seconds spent generating (a call queued behind
        # another counts from when that one finished, weight pushes between them included, so
        # this is an upper bound) and scoring-call seconds (summed: calls overlap).
        self.generate_s = self.reward_s = 0.0
        self._thread = threading.Thread(target=self._collect, name="rollout-producer", daemon=True)
        self._thread.start()

    def refill(self, steps_taken: int) -> None:
        """Issue every prompt the staleness rule allows now; the engines start on them at once."""
        with self._cond:
            n = self.buffer.allowed(self.job.state.version, steps_taken)
            indices = self.buffer.issue(n)
            for start in range(0, len(indices), self.call_size):
                part = indices[start:start + self.call_size]
                rows = [self.job.task.row(i) for i in part]
                prompt_ids = [self.job.tokenizer(r.prompt).input_ids for r in rows]
                engine = self._next_engine % len(self.job.rollout.workers)
                self._next_engine += 1
                call = _Call(None, part, rows, prompt_ids, engine, 0.0, 0)
                if self.cfg.rollout.partial_rollouts:
                    call.partial = PartialResponses(prompt_ids, self.params, self.cfg.rollout.partial_segment_tokens)
                    self._issue(call, *call.partial.first_segment())
                else:
                    self._issue(call, prompt_ids, self.params)
            self._cond.notify_all()

    def _issue(self, call: _Call, prompt_ids: list[list[int]], params) -> None:
        """Send (a segment of) a call to its engine; the collector waits for it."""
        with self._cond:
            call.worker = self.job.rollout.worker(call.engine)
            call.ref = call.worker.generate.remote(prompt_ids, params)
            call.segment = (prompt_ids, params)
            call.issued_at, call.min_version = time.perf_counter(), self.job.state.version
            self._calls.append(call)
            self._cond.notify_all()

    def take(self, step: int) -> StepTake:
        """The groups learner step `step` trains on; waits for them, re-issuing any that grew too old."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                taken = self.buffer.take(step)
                if taken is not None:
                    return taken
                self._check_dynamic_sampling()
                self.refill(step)  # prompts re-issued or dropped while waiting make room (the lock is reentrant)
                self._cond.wait(timeout=1.0)

    def timings(self) -> tuple[float, float]:
        """Generating and scoring seconds since the last call; both overlap the learner."""
        with self._cond:
            out, self.generate_s, self.reward_s = (self.generate_s, self.reward_s), 0.0, 0.0
        return out

    def stop(self) -> None:
        """Stop collecting and write the timeline. Calls still on the engines finish there and are
        ignored; their prompts were never consumed, so a resumed job issues them again."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        self._scoring.shutdown(wait=True, cancel_futures=True)
        self.timeline.write(self.job.out)

    def _check_dynamic_sampling(self) -> None:
        a = self.cfg.algo
        limit = max(1, a.dynamic_sampling_max_rounds) * self.cfg.rollout.prompts_per_step
        if a.dynamic_sampling and self.buffer.dropped_since_take >= limit:
            raise RuntimeError(
                f"dynamic sampling dropped {self.buffer.dropped_since_take} groups while waiting for one step: "
                "every group's rewards were equal. Raise algo.dynamic_sampling_max_rounds or turn "
                "algo.dynamic_sampling off.")

    def _collect(self) -> None:
        """Background thread: wait for a generate call, hand its groups to a scoring thread."""
        timeout_s = self.cfg.rollout.generate_timeout_s
        last_progress = time.monotonic()
        try:
            while True:
                with self._cond:
                    while not self._calls and not self._stopping:
                        self._cond.wait()
                        last_progress = time.monotonic()
                    if self._stopping:
                        return
                    refs = [c.ref for c in self._calls]
                done, _ = ray.wait(refs, num_returns=1, timeout=0.2)
                if not done:
                    if time.monotonic() - last_progress > timeout_s:
                        raise RolloutError(f"no generate call finished within rollout.generate_timeout_s="
                                           f"{timeout_s:g} s")
                    continue
                last_progress = time.monotonic()
                with self._cond:
                    call = next(c for c in self._calls if c.ref == done[0])
                    self._calls.remove(call)
                try:
                    completions = ray.get(call.ref)
                except ray.exceptions.RayActorError as e:
                    # Its engine died: a replacement holding the last pushed weights gets the call again.
                    self.job.rollout.replace(call.engine, call.worker, e)
                    self._issue(call, *call.segment)
                    continue
                generated = time.perf_counter()
                with self._cond:
                    started = max(call.issued_at, self._engine_free_at[call.engine])
                    self.generate_s += generated - started
                    self._engine_free_at[call.engine] = generated
                self.timeline.record("generate", started, generated)
                sampled_by = min(c.policy_version for cs in completions for c in cs)
                if sampled_by < call.min_version:  # re-issuing would never make such groups fresh
                    raise RolloutError(f"an engine sampled with policy version {sampled_by} after version "
                                       f"{call.min_version} was pushed to it")
                if call.partial is not None:
                    call.partial.add(completions)
                    continuation = call.partial.continuation()
                    if continuation is not None:
                        self._issue(call, *continuation)
                        continue
                    completions = call.partial.completions()
                groups = [to_group(r, p, c, self.job.tokenizer)
                          for r, p, c in zip(call.rows, call.prompt_ids, completions)]
                if call.partial is not None:
                    for group, spans in zip(groups, call.partial.spans()):
                        for sample, sample_spans in zip(group.samples, spans):
                            sample.set_version_spans(sample_spans)
                self._scoring.submit(self._score, call.prompt_indices, groups)
        except BaseException as e:
            self._fail(e)

    def _score(self, prompt_indices: list[int], groups: list[Group]) -> None:
        """A scoring thread: score one generate call's groups and hand them to the buffer."""
        try:
            start = time.perf_counter()
            self.job.rewards.score([s for g in groups for s in g.samples])
            end = time.perf_counter()
            self.timeline.record("score", start, end)
            with self._cond:
                self.reward_s += end - start
                for index, group in zip(prompt_indices, groups):
                    if self.cfg.algo.dynamic_sampling and not has_signal(group.rewards):
                        self.buffer.drop(index)
                    else:
                        self.buffer.complete(index, group)
                self._cond.notify_all()
        except BaseException as e:
            self._fail(e)

    def _fail(self, error: BaseException) -> None:
        """Hand an error to the driver thread, which raises it from `take`."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

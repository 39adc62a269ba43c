"""A pool of RewardWorker actors that scores samples and survives bad reward functions.

Each step's samples are split across the workers. A worker that hung past its
deadline is killed and replaced; its samples get an error and are masked. A worker
that died (its process killed, or the function crashed it) is replaced and its part
scored once more on the replacement; if that one dies too, the samples get an error
and are masked. Either way nothing is silently dropped, and replacements are
counted (`restarts`). When a step's error fraction
passes `max_error_fraction`, the job stops with `RewardFunctionError`, naming the
function and showing one traceback; a worker stops scoring its part once the step's
budget is spent, so a failing function fails the job in seconds.

Several threads may score at once (the rollout source keeps several scoring calls in
flight; evaluation scores while it runs): each call works on the worker handles it
started with, and a worker is replaced only if it is still the one that failed, under
a lock, so two calls that saw the same worker fail replace it once.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import ray

from cispo.reward.worker import NOT_SCORED, RewardResult, RewardWorker
from cispo.types import Sample


class RewardFunctionError(RuntimeError):
    pass


@dataclass
class RewardStats:
    scored: int = 0
    errors: int = 0
    seconds: float = 0.0


class RewardPool:
    def __init__(self, spec: str, timeout_s: float, max_error_fraction: float,
                 num_workers: int = 1, batched: bool = False, num_cpus: float = 0.0, start_timeout_s: float = 120.0):
        self.spec, self.timeout_s, self.batched = spec, timeout_s, batched
        self.max_error_fraction = max_error_fraction
        self._actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(RewardWorker)
        self.workers = [self._start() for _ in range(num_workers)]
        # Fail now, not mid-run, when the function cannot be loaded: creating the actor
        # loads it, and a load error surfaces on the first call.
        try:
            ray.get([w.is_poisoned.remote() for w in self.workers], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            self.shutdown()
            raise RuntimeError(f"reward workers for {spec} did not start within {start_timeout_s:g} s "
                               "(not enough free CPUs in the Ray cluster?)") from e
        except ray.exceptions.RayActorError as e:  # its __init__ raised: the function did not load
            self.shutdown()
            raise RuntimeError(f"reward workers for {spec} did not start: {e}") from e
        self.restarts = 0
        self._lock = threading.Lock()  # guards `workers` and `restarts` against concurrent scoring calls

    def _start(self):
        return self._actor_cls.remote(self.spec, self.timeout_s, self.batched)

    def _replace(self, index: int, failed) -> None:
        """Replace worker `index` if it is still `failed` (another call may have replaced it already)."""
        with self._lock:
            if self.workers[index] is not failed:
                return
            ray.kill(failed, no_restart=True)
            self.workers[index] = self._start()
            self.restarts += 1

    def _time_limit_s(self, n_items: int) -> float:
        """How long a worker may take for n items: it scores them one after another, each within timeout_s."""
        return self.timeout_s * (1 if self.batched else n_items) + 30.0

    def score_items(self, items: list[tuple[str, str, dict]], max_errors: int | None = None) -> list[RewardResult]:
        """Score (prompt, response, metadata) items, in order, spread over the workers.

        A worker whose part has more than `max_errors` errors leaves the rest of it unscored."""
        with self._lock:
            workers = list(self.workers)
        n = len(workers)
        parts = [list(range(i, len(items), n)) for i in range(n)]
        refs = {i: workers[i].score.remote([items[j] for j in part], max_errors)
                for i, part in enumerate(parts) if part}
        deadline = {i: time.monotonic() + self._time_limit_s(len(parts[i])) for i in refs}
        results: list[RewardResult | None] = [None] * len(items)
        with_errors = set()  # workers whose part has an error: one of them may have been poisoned
        for i, ref in refs.items():
            part = [items[j] for j in parts[i]]
            try:
                part_results = ray.get(ref, timeout=max(0.0, deadline[i] - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                hung = RewardResult(None, error=f"{self.spec}: the reward worker did not answer within "
                                                f"{self._time_limit_s(len(part)):g} s for {len(part)} samples "
                                                f"(reward.timeout_s={self.timeout_s:g} each, and 30 s); replaced")
                part_results = [hung] * len(part)
                self._replace(i, workers[i])
            except ray.exceptions.RayActorError:
                self._replace(i, workers[i])
                part_results = self._score_again(i, part, max_errors)
            for j, result in zip(parts[i], part_results):
                results[j] = result
            if any(r.error is not None for r in part_results):
                with_errors.add(i)
        # Only a timed-out call poisons a worker, and it leaves an error in its part. Asking a worker
        # without errors would queue behind the other scoring calls' parts and delay this one; a worker
        # that died after answering is found by the next call, which scores its part again.
        for i in with_errors:
            worker = self.workers[i]
            try:
                poisoned = ray.get(worker.is_poisoned.remote())
            except ray.exceptions.RayActorError:
                poisoned = True  # died since it answered: replace it now
            if poisoned:
                self._replace(i, worker)  # a timed-out call is still running in that worker
        return results  # type: ignore[return-value]

    def _score_again(self, i: int, part: list[tuple[str, str, dict]], max_errors: int | None) -> list[RewardResult]:
        """Score a dead worker's part on its replacement; errors (masked) if that one dies as well."""
        worker = self.workers[i]
        try:
            return ray.get(worker.score.remote(part, max_errors), timeout=self._time_limit_s(len(part)))
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            self._replace(i, worker)
            return [RewardResult(None, error=f"{self.spec}: reward worker died, and its replacement "
                                             f"failed on the same samples: {e!r}")] * len(part)

    def score(self, samples: list[Sample]) -> RewardStats:
        """Fill reward, reward_details and reward_error of every sample; stop the job past the error budget."""
        start = time.perf_counter()
        budget = math.floor(self.max_error_fraction * len(samples))  # more errors than this fail the step
        results = self.score_items([(s.prompt_text, s.response_text, s.metadata) for s in samples], budget)
        for sample, result in zip(samples, results):
            sample.reward, sample.reward_details, sample.reward_error = result.score, result.details, result.error
        stats = RewardStats(scored=len(samples), errors=sum(s.reward_error is not None for s in samples),
                            seconds=time.perf_counter() - start)
        if samples and stats.errors / len(samples) > self.max_error_fraction:
            failed = [r.error for r in results if r.error is not None and not r.error.startswith(NOT_SCORED)]
            unscored = stats.errors - len(failed)
            raise RewardFunctionError(
                f"reward function {self.spec} failed on {len(failed)}/{len(samples)} samples of this step "
                f"(more than reward.max_error_fraction={self.max_error_fraction})"
                + (f"; {unscored} more were not scored once that was certain" if unscored else "")
                + f". One of the errors:\n{failed[0]}"
            )
        return stats

    def shutdown(self) -> None:
        """Stop the workers gracefully, so their exit hooks run (e.g. returning warm sandboxes)."""
        refs = [w.__ray_terminate__.remote() for w in self.workers]
        _, hung = ray.wait(refs, num_returns=len(refs), timeout=30)
        for w, ref in zip(self.workers, refs):
            if ref in hung:
                ray.kill(w)

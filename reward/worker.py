"""Run a user's reward function safely: per-call timeout, errors caught and recorded.

`RewardWorker` is the body of a Ray actor (the pool wraps it). A reward function
that raises, returns NaN/None/garbage, or runs past its time limit yields a
`RewardResult` with `error` set; the sample is then kept, masked from the loss and
counted. A synchronous call that timed out keeps running in its thread (Python
cannot kill a thread), so the worker reports itself `poisoned` and the pool
replaces it.

Calls run one after another, so a function need not be thread-safe and its time
limit is not eaten by other calls. Once one call has timed out, the function has
shown it can hang: the rest of the part start at once, each with its own limit, so
N hung samples cost about two limits, not N. Async functions run concurrently
from the start. Scoring stops as soon as the part's errors pass `max_errors` (the
step's error budget): the job is failing, and the rest would only delay saying so.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from cispo.reward.loader import is_async, load_reward_fn


NOT_SCORED = "not scored:"  # starts the error of a sample left unscored once the step's error budget was spent


@dataclass
class RewardResult:
    score: float | None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # what went wrong, with the traceback; None when scored
    timed_out: bool = False


def normalise_result(value: Any, fn_name: str) -> RewardResult:
    """Turn what a reward function returned into a RewardResult, or an error naming the problem."""
    details: dict[str, Any] = {}
    if isinstance(value, dict):
        if "score" not in value:
            return RewardResult(None, error=f"{fn_name} returned a dict without 'score': keys {sorted(value)}")
        details = {k: v for k, v in value.items() if k != "score"}
        value = value["score"]
    if isinstance(value, bool):
        value = float(value)
    if value is None:
        return RewardResult(None, details, f"{fn_name} returned None")
    if not isinstance(value, (int, float)):
        return RewardResult(None, details, f"{fn_name} returned {type(value).__name__}, expected a float")
    if not math.isfinite(value):
        return RewardResult(None, details, f"{fn_name} returned {value}")
    return RewardResult(float(value), details)


class RewardWorker:
    def __init__(self, spec: str, timeout_s: float, batched: bool = False):
        self.spec, self.timeout_s, self.batched = spec, timeout_s, batched
        self.fn: Callable = load_reward_fn(spec)
        self.is_async = is_async(self.fn)
        self.poisoned = False

    def is_poisoned(self) -> bool:
        return self.poisoned

    def score(self, items: list[tuple[str, str, dict]], max_errors: int | None = None) -> list[RewardResult]:
        """Score (prompt, response, metadata) items; never raises for a bad reward function."""
        if self.batched:
            return self._score_batched(items)
        if self.is_async:
            return self._score_async(items)
        results: list[RewardResult] = []
        errors = 0
        for n, item in enumerate(items):
            if max_errors is not None and errors > max_errors:
                return results + [_budget_spent(max_errors)] * (len(items) - n)
            if self.poisoned:  # an earlier call hung: let the others wait out their limits together
                return results + [_finish(self.spec, call, self.timeout_s) for call in
                                  [_Call.start(self.fn, rest) for rest in items[n:]]]
            result = _finish(self.spec, _Call.start(self.fn, item), self.timeout_s)
            self.poisoned |= result.timed_out
            errors += result.error is not None
            results.append(result)
        return results

    def _score_batched(self, items: list[tuple[str, str, dict]]) -> list[RewardResult]:
        prompts, responses, metas = (list(x) for x in zip(*items)) if items else ([], [], [])
        call = _Call.start(self.fn, (prompts, responses, metas))
        call.thread.join(self.timeout_s)
        if call.thread.is_alive():
            self.poisoned = True
            return [_timed_out(self.spec, self.timeout_s) for _ in items]
        if "error" in call.box:
            return [_raised(self.spec, call.box["error"]) for _ in items]
        out = call.box["value"]
        if not isinstance(out, (list, tuple)) or len(out) != len(items):
            got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") else type(out).__name__
            err = RewardResult(None, error=f"{self.spec} (batched) returned {got}, expected a list of {len(items)}")
            return [err for _ in items]
        return [normalise_result(v, self.spec) for v in out]

    def _score_async(self, items: list[tuple[str, str, dict]]) -> list[RewardResult]:
        async def one(item: tuple) -> RewardResult:
            try:
                return normalise_result(await asyncio.wait_for(self.fn(*item), self.timeout_s), self.spec)
            except asyncio.TimeoutError:
                return _timed_out(self.spec, self.timeout_s)
            except BaseException:  # noqa: BLE001 - a user's function may raise anything
                return _raised(self.spec, traceback.format_exc())

        async def run() -> list[RewardResult]:
            return list(await asyncio.gather(*(one(item) for item in items)))

        return asyncio.run(run())


@dataclass
class _Call:
    """One call of a synchronous reward function, running in a daemon thread of its own."""
    thread: threading.Thread
    box: dict[str, Any]
    started: float

    @classmethod
    def start(cls, fn: Callable, args: tuple) -> "_Call":
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException:  # noqa: BLE001 - a user's function may raise anything
                box["error"] = traceback.format_exc()

        thread = threading.Thread(target=target, daemon=True, name="reward-call")
        call = cls(thread, box, time.monotonic())
        thread.start()
        return call


def _finish(spec: str, call: _Call, timeout_s: float) -> RewardResult:
    """Wait for a call until timeout_s after its start; its result, or the error that ended it."""
    call.thread.join(max(0.0, call.started + timeout_s - time.monotonic()))
    if call.thread.is_alive():
        return _timed_out(spec, timeout_s)
    if "error" in call.box:
        return _raised(spec, call.box["error"])
    return normalise_result(call.box["value"], spec)


def _timed_out(spec: str, timeout_s: float) -> RewardResult:
    return RewardResult(None, error=f"{spec} timed out after {timeout_s:g} s (reward.timeout_s)", timed_out=True)


def _raised(spec: str, formatted_traceback: str) -> RewardResult:
    return RewardResult(None, error=f"{spec} raised:\n{formatted_traceback}")


def _budget_spent(max_errors: int) -> RewardResult:
    return RewardResult(None, error=f"{NOT_SCORED} more than {max_errors} samples of this step had already failed "
                                    "(reward.max_error_fraction)")

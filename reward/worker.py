"""Run a user's reward function safely: per-call timeout, errors caught and recorded.

`RewardWorker` is the body of a Ray actor (the pool wraps it). A reward function
that raises, returns NaN/None/garbage, or runs past its time limit yields a
`RewardResult` with `error` set; the sample is then kept, masked from the loss and
counted. A synchronous call that timed out keeps running in its thread (Python
cannot kill a thread), so the worker reports itself `poisoned` and the pool
replaces it.

Calls run one after another on one long-lived thread, so a function need not be
thread-safe and its time limit is not eaten by other calls. Once one call has timed
out, the function has shown it can hang: the rest of the part start at once, each in
a thread of its own with its own limit, so N hung samples cost about two limits, not
N. Async functions run concurrently from the start. Scoring stops as soon as the
part's errors pass `max_errors` (the step's error budget): the job is failing, and the
rest would only delay saying so.
"""

from __future__ import annotations

import asyncio
import math
import queue
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
        self.runner = None if batched or self.is_async else _CallRunner(self.fn, spec)
        self.poisoned = False

    def is_poisoned(self) -> bool:
        return self.poisoned

    def score(self, items: list[tuple[str, str, dict]], max_errors: int | None = None) -> list[RewardResult]:
        """Score (prompt, response, metadata) items; never raises for a bad reward function."""
        if self.batched:
            return self._score_batched(items)
        if self.is_async:
            return self._score_async(items)
        if self.poisoned:  # an earlier call hung: let these wait out their limits together
            return [_finish(self.spec, call, self.timeout_s) for call in [_Call.in_own_thread(self.fn, item)
                                                                          for item in items]]
        calls = self.runner.submit(items, max_errors)
        results: list[RewardResult] = []
        for n, call in enumerate(calls):
            results.append(_finish(self.spec, call, self.timeout_s))
            if results[-1].timed_out:  # the runner is stuck in that call: the rest start in threads of their own
                self.poisoned = True
                for rest in calls[n + 1:]:
                    rest.cancelled = True
                return results + self.score(items[n + 1:])
        return results

    def _score_batched(self, items: list[tuple[str, str, dict]]) -> list[RewardResult]:
        prompts, responses, metas = (list(x) for x in zip(*items)) if items else ([], [], [])
        call = _Call.in_own_thread(self.fn, (prompts, responses, metas))
        if not call.done.wait(self.timeout_s):
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


class _Call:
    """One call of a synchronous reward function: its arguments, then its value or the error it raised."""

    def __init__(self, args: tuple):
        self.args, self.box = args, {}
        self.done = threading.Event()
        self.started: float | None = None  # when a thread began it
        self.cancelled = False  # before it starts: it will not run
        self.result: RewardResult | None = None  # normalised once, by whichever thread reads it first

    def run(self, fn: Callable) -> None:
        self.started = time.monotonic()
        try:
            self.box["value"] = fn(*self.args)
        except BaseException:  # noqa: BLE001 - a user's function may raise anything
            self.box["error"] = traceback.format_exc()
        finally:
            self.done.set()

    @classmethod
    def in_own_thread(cls, fn: Callable, args: tuple) -> "_Call":
        call = cls(args)
        threading.Thread(target=call.run, args=(fn,), daemon=True, name="reward-call").start()
        return call


class _CallRunner:
    """One daemon thread that runs a function's calls one after another, in the order submitted.

    Starting a thread per call cost 0.1-0.3 ms here, which for a cheap function was most of a
    step's scoring time. A part's calls are submitted at once and run back to back; the runner
    itself stops a part once its errors pass the budget. A call that overruns its limit keeps
    this thread busy for good: the worker is poisoned then and does not use the runner again."""

    def __init__(self, fn: Callable, spec: str):
        self.fn, self.spec = fn, spec
        self.queue: queue.SimpleQueue[tuple[list[_Call], int | None]] = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True, name="reward-calls").start()

    def _run(self) -> None:
        while True:
            calls, max_errors = self.queue.get()
            errors = 0
            for call in calls:
                if call.cancelled:
                    continue
                if max_errors is not None and errors > max_errors:
                    call.box["skipped_after"] = max_errors
                    call.done.set()
                    continue
                call.run(self.fn)
                errors += _result(self.spec, call).error is not None

    def submit(self, items: list[tuple], max_errors: int | None) -> list[_Call]:
        calls = [_Call(item) for item in items]
        self.queue.put((calls, max_errors))
        return calls


def _finish(spec: str, call: _Call, timeout_s: float) -> RewardResult:
    """Wait for a call until timeout_s after it started; its result, or the error that ended it.
    A call waited for in submission order is running, or about to start."""
    while not call.done.wait(max(0.0, (call.started or time.monotonic()) + timeout_s - time.monotonic())):
        if call.started is not None and time.monotonic() >= call.started + timeout_s:
            return _timed_out(spec, timeout_s)
    return _result(spec, call)


def _result(spec: str, call: _Call) -> RewardResult:
    """The finished call's RewardResult (the runner counts errors with it, the waiter returns it)."""
    if call.result is None:
        if "skipped_after" in call.box:
            call.result = _budget_spent(call.box["skipped_after"])
        elif "error" in call.box:
            call.result = _raised(spec, call.box["error"])
        else:
            call.result = normalise_result(call.box["value"], spec)
    return call.result


def _timed_out(spec: str, timeout_s: float) -> RewardResult:
    return RewardResult(None, error=f"{spec} timed out after {timeout_s:g} s (reward.timeout_s)", timed_out=True)


def _raised(spec: str, formatted_traceback: str) -> RewardResult:
    return RewardResult(None, error=f"{spec} raised:\n{formatted_traceback}")


def _budget_spent(max_errors: int) -> RewardResult:
    return RewardResult(None, error=f"{NOT_SCORED} more than {max_errors} samples of this step had already failed "
                                    "(reward.max_error_fraction)")

"""Run a user's reward function safely: per-call timeout, errors caught and recorded.

`RewardWorker` is the body of a Ray actor (the pool wraps it). A reward function
that raises, returns NaN/None/garbage, or runs past its time limit yields a
`RewardResult` with `error` set; the sample is then kept, masked from the loss and
counted. A synchronous call that timed out keeps running in its thread (Python
cannot kill a thread), so the worker reports itself `poisoned` and the pool
replaces it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from cispo.reward.loader import is_async, load_reward_fn


@dataclass
class RewardResult:
    score: float | None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # what went wrong, with the traceback; None when scored


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

    def score(self, items: list[tuple[str, str, dict]]) -> list[RewardResult]:
        """Score (prompt, response, metadata) items; never raises for a bad reward function."""
        if self.batched:
            prompts, responses, metas = (list(x) for x in zip(*items)) if items else ([], [], [])
            out = self._call((prompts, responses, metas), self.timeout_s)
            if isinstance(out, RewardResult):  # the call itself failed: every item shares the error
                return [out for _ in items]
            if not isinstance(out, (list, tuple)) or len(out) != len(items):
                got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") else type(out).__name__
                err = RewardResult(None, error=f"{self.spec} (batched) returned {got}, expected a list of {len(items)}")
                return [err for _ in items]
            return [normalise_result(v, self.spec) for v in out]
        results = []
        for item in items:
            out = self._call(item, self.timeout_s)
            results.append(out if isinstance(out, RewardResult) else normalise_result(out, self.spec))
        return results

    def _call(self, args: tuple, timeout_s: float) -> Any:
        """Call the function with a time limit; a RewardResult (with error) comes back on failure."""
        if self.is_async:
            return self._call_async(args, timeout_s)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = self.fn(*args)
            except BaseException:  # noqa: BLE001 - a user's function may raise anything
                box["error"] = traceback.format_exc()

        thread = threading.Thread(target=target, daemon=True, name="reward-call")
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            self.poisoned = True
            return RewardResult(None, error=f"{self.spec} timed out after {timeout_s:g} s (reward.timeout_s)")
        if "error" in box:
            return RewardResult(None, error=f"{self.spec} raised:\n{box['error']}")
        return box["value"]

    def _call_async(self, args: tuple, timeout_s: float) -> Any:
        async def run() -> Any:
            return await asyncio.wait_for(self.fn(*args), timeout_s)

        try:
            return asyncio.run(run())
        except asyncio.TimeoutError:
            return RewardResult(None, error=f"{self.spec} timed out after {timeout_s:g} s (reward.timeout_s)")
        except BaseException:  # noqa: BLE001
            return RewardResult(None, error=f"{self.spec} raised:\n{traceback.format_exc()}")

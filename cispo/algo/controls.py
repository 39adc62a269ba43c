"""MiniMax-M1's training controls as small pure pieces the trainer drives.

- DAPO dynamic sampling: drop groups with nothing to learn; the trainer refills.
- DAPO overlong reward shaping and optional masking of truncated responses.
- M1's repetition early stop: N consecutive tokens each sampled with p > threshold.
- M1's staged length curriculum: raise the response cap when p99 length nears it
  and a training metric has plateaued.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, Protocol, Sequence, TypeVar

# --------------------------------------------------------------------------- dynamic sampling


class HasRewards(Protocol):
    """Anything with per-sample rewards, NaN for a failed sample (cispo.types.Group)."""

    @property
    def rewards(self) -> list[float]: ...


GroupT = TypeVar("GroupT", bound=HasRewards)


def has_signal(rewards: Sequence[float]) -> bool:
    """True when a group can teach anything: at least two valid (non-NaN) rewards, not all equal.

    All-equal groups get advantage 0 under every group-relative estimator, so they only
    dilute the batch (DAPO §3.2). The rule is exact equality, the same as
    cispo.algo.advantages uses to zero a group, so every kept group has nonzero advantages.
    """
    valid = [r for r in rewards if not math.isnan(r)]
    return len(valid) >= 2 and min(valid) != max(valid)


@dataclass(frozen=True)
class Filtered(Generic[GroupT]):
    """What the dynamic-sampling filter kept, and how many groups it dropped."""

    kept: list[GroupT]
    dropped: int


def dynamic_sampling_filter(groups: Sequence[GroupT]) -> Filtered[GroupT]:
    """DAPO dynamic sampling: keep the groups that `has_signal`, in order; count the rest.

    The trainer keeps sampling and filtering until it has a full batch of kept groups,
    and logs `dropped` so the cost of the filter is visible.
    """
    kept = [g for g in groups if has_signal(g.rewards)]
    return Filtered(kept=kept, dropped=len(groups) - len(kept))


# --------------------------------------------------------------------------- long responses


def overlong_penalty(length: int, *, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (eq. 13), to add to the task reward: ≤ 0.

        0                                  if L ≤ max_len - buffer
        factor · ((max_len - buffer) - L) / buffer   if max_len - buffer < L ≤ max_len
        -factor                            if L > max_len

    Rises linearly from 0 to -factor across the last `buffer` tokens before the cap, so
    the policy is told "too long" gradually instead of by a cliff at the cap. DAPO uses
    max_len 20480, buffer 4096 and factor 1. buffer = 0 leaves only the -factor beyond the cap.
    """
    if not 0 <= buffer <= max_len:
        raise ValueError(f"overlong buffer must be in [0, max_len={max_len}], got {buffer}")
    if length > max_len:
        return -factor
    soft_start = max_len - buffer
    if length <= soft_start:
        return 0.0
    return factor * (soft_start - length) / buffer


def truncation_mask(finish_reasons: Sequence[str], *, mask_truncated: bool) -> list[float]:
    """Per-sample loss weight: 0.0 for a response cut at the length cap when `mask_truncated`.

    DAPO's overlong filtering: a truncated answer is scored as if it were final, which
    punishes reasoning that was sound but long; masking it removes that noise. Only
    "length" counts as truncated: a "repetition" stop is the model's own degenerate
    loop, whose negative signal we want to keep.
    """
    return [0.0 if mask_truncated and reason == "length" else 1.0 for reason in finish_reasons]


# --------------------------------------------------------------------------- length curriculum


def length_percentile(lengths: Sequence[float], q: float = 99.0) -> float:
    """The q-th percentile of response lengths, interpolated linearly (numpy's default)."""
    if not lengths:
        raise ValueError("length_percentile needs at least one length")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(lengths)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class LengthCurriculum:
    """Staged response-length caps (M1 §5: 40K → 48K → 56K → 64K → 72K → 80K).

    M1 moves to the next stage once the generated sequences' perplexity has converged
    and the 99th-percentile output length approaches the current cap. Here:

        advance when  p99_length ≥ near_cap · cap
                 and  the last `window` metric values of this stage span ≤ min_delta

    The metric is whatever the trainer chooses (perplexity, mean reward); "plateaued"
    is measured as a range so it works for a falling and a rising metric alike. The
    metric history restarts at every stage, so each stage needs `window` steps.
    Call `update` once per training step; checkpoint with `state_dict`.
    """

    def __init__(self, caps: Sequence[int], *, near_cap: float = 0.95, window: int = 10, min_delta: float = 0.01):
        if not caps or any(b <= a for a, b in zip(caps, caps[1:])) or caps[0] <= 0:
            raise ValueError(f"curriculum caps must be positive and strictly increasing, got {list(caps)}")
        if not 0.0 < near_cap <= 1.0:
            raise ValueError(f"curriculum near_cap must be in (0, 1], got {near_cap}")
        if window < 2:
            raise ValueError(f"curriculum window must be >= 2 (a plateau needs two points), got {window}")
        if min_delta < 0:
            raise ValueError(f"curriculum min_delta must be >= 0, got {min_delta}")
        self.caps = list(caps)
        self.near_cap = near_cap
        self.window = window
        self.min_delta = min_delta
        self.stage = 0
        self._history: list[float] = []

    @property
    def cap(self) -> int:
        """The response-length cap (max new tokens) of the current stage."""
        return self.caps[self.stage]

    @property
    def is_last(self) -> bool:
        return self.stage == len(self.caps) - 1

    def plateaued(self) -> bool:
        """The last `window` metric values of this stage span at most min_delta."""
        recent = self._history[-self.window :]
        return len(recent) == self.window and max(recent) - min(recent) <= self.min_delta

    def update(self, p99_length: float, metric: float) -> bool:
        """Record one step's p99 response length and metric; True when the cap was raised."""
        self._history.append(metric)
        if self.is_last or p99_length < self.near_cap * self.cap or not self.plateaued():
            return False
        self.stage += 1
        self._history = []
        return True

    def state_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "history": list(self._history)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        stage = int(state["stage"])  # type: ignore[arg-type]
        if not 0 <= stage < len(self.caps):
            raise ValueError(f"curriculum state has stage {stage}, but there are {len(self.caps)} caps")
        self.stage = stage
        self._history = [float(x) for x in state["history"]]  # type: ignore[union-attr]

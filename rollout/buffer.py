"""The bookkeeping of asynchronous rollouts: which prompts to issue, which groups a step may train on.

Pure Python (no Ray), so the staleness rule is tested with scripted versions.

Versions count learner updates (0 = after warm-up); learner step s produces version
s + 1. A group sampled by version v may be trained at step s only if
s - v <= max_staleness. Every issued prompt ends in exactly one place:

    issued -> in flight -> ready -> trained            (consumed)
          \\              \\-> dropped: no signal (consumed, counted; dynamic sampling)
           \\              \\-> too old: re-issued (counted; its samples are never trained)
            \\-> skipped: its prompt does not fit (consumed, counted; never generated)

Prompts still in flight or ready when the job stops are not consumed: a resumed job
issues them again. Consumption is out of order (a re-issued prompt is trained after
later ones), so the data position is a watermark (every prompt below it is consumed)
plus the consumed prompts above it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cispo.types import Group


@dataclass
class StepTake:
    """What one learner step got from the buffer."""

    groups: list[Group]
    prompt_indices: list[int]
    stale_resampled: int = 0  # groups found too old while this step waited, their prompts re-issued
    dropped: int = 0  # groups without signal dropped (dynamic sampling) while this step waited
    skipped: int = 0  # prompts skipped unsampled (too long for the model) while this step waited


@dataclass
class RolloutBuffer:
    prompts_per_step: int
    max_staleness: int
    watermark: int = 0  # every prompt index below this is consumed
    consumed_above: set[int] = field(default_factory=set)  # consumed indices >= watermark
    _cursor: int = field(init=False)
    _reissue: deque[int] = field(init=False, default_factory=deque)
    _in_flight: set[int] = field(init=False, default_factory=set)
    _ready: list[tuple[int, int, Group]] = field(init=False, default_factory=list)  # (arrival, prompt, group)
    _arrivals: int = field(init=False, default=0)
    _stale: int = field(init=False, default=0)
    _dropped: int = field(init=False, default=0)
    _skipped: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._cursor = self.watermark

    def allowed(self, engine_version: int, steps_taken: int) -> int:
        """How many more prompts may be issued now without any growing too old in steady state.

        A prompt issued now is sampled by a version >= engine_version. Groups are trained
        oldest first, P per step, so the k-th group outstanding (k = 0, 1, ...) is trained
        at step steps_taken + k // P; keeping k < (engine_version + max_staleness + 1 -
        steps_taken) * P keeps that step - engine_version <= max_staleness. With
        max_staleness 0 this issues nothing while the learner trains: the synchronous schedule.
        """
        limit = (engine_version + self.max_staleness + 1 - steps_taken) * self.prompts_per_step
        return max(0, limit - len(self._in_flight) - len(self._ready))

    def issue(self, n: int) -> list[int]:
        """The next n prompt indices: re-issued ones first, then fresh ones not consumed before a resume."""
        out = []
        while len(out) < n:
            if self._reissue:
                index = self._reissue.popleft()
            else:
                index = self._cursor
                self._cursor += 1
                if index in self.consumed_above:
                    continue
            out.append(index)
        self._in_flight.update(out)
        return out

    def complete(self, prompt_index: int, group: Group) -> None:
        """A scored group is back."""
        self._in_flight.remove(prompt_index)
        self._ready.append((self._arrivals, prompt_index, group))
        self._arrivals += 1

    def drop(self, prompt_index: int) -> None:
        """A scored group without signal (all rewards equal): its prompt is consumed, not trained."""
        self._in_flight.remove(prompt_index)
        self._consume(prompt_index)
        self._dropped += 1

    def skip(self, prompt_index: int) -> None:
        """An issued prompt that will not be sampled (it does not fit the model): consumed, counted."""
        self._in_flight.remove(prompt_index)
        self._consume(prompt_index)
        self._skipped += 1

    def take(self, step: int, partial: bool = False) -> StepTake | None:
        """The P oldest groups step `step` may train on, or None while too few are ready
        (`partial`: fewer than P will do, but not none).

        Groups too old for this step (and so for every later one) leave the buffer first
        and their prompts are queued for re-issue.
        """
        fresh = []
        for arrival, index, group in self._ready:
            if step - group.policy_version > self.max_staleness:
                self._reissue.append(index)
                self._stale += 1
            else:
                fresh.append((arrival, index, group))
        self._ready = fresh
        if len(fresh) < (1 if partial else self.prompts_per_step):
            return None
        fresh.sort(key=lambda entry: (entry[2].policy_version, entry[0]))
        taken, self._ready = fresh[: self.prompts_per_step], fresh[self.prompts_per_step:]
        for _, index, _ in taken:
            self._consume(index)
        out = StepTake([g for _, _, g in taken], [i for _, i, _ in taken], self._stale, self._dropped, self._skipped)
        self._stale = self._dropped = self._skipped = 0
        return out

    def _consume(self, index: int) -> None:
        self.consumed_above.add(index)
        while self.watermark in self.consumed_above:
            self.consumed_above.remove(self.watermark)
            self.watermark += 1

    @property
    def dropped_since_take(self) -> int:
        return self._dropped

    @property
    def skipped_since_take(self) -> int:
        return self._skipped

    @property
    def in_flight(self) -> int:
        """Prompts issued whose groups are not back yet."""
        return len(self._in_flight)

    @property
    def outstanding(self) -> int:
        """Prompts issued and not yet consumed or queued for re-issue."""
        return len(self._in_flight) + len(self._ready)

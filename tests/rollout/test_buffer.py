"""The staleness rule and prompt accounting of asynchronous rollouts, with scripted policy versions."""

from __future__ import annotations

import itertools
import random

from cispo.rollout.buffer import RolloutBuffer
from cispo.types import Group, Sample

_ids = itertools.count()


def group(version: int, size: int = 2) -> Group:
    gid = f"g{next(_ids)}"
    return Group(gid, [Sample(f"{gid}-{k}", gid, [1], [2], [-0.5], "stop", version) for k in range(size)])


def test_max_staleness_zero_is_the_synchronous_schedule():
    buf = RolloutBuffer(prompts_per_step=3, max_staleness=0)
    for step in range(4):
        indices = buf.issue(buf.allowed(engine_version=step, steps_taken=step))
        assert indices == [3 * step, 3 * step + 1, 3 * step + 2]
        assert buf.take(step) is None
        for i in indices:
            buf.complete(i, group(version=step))
        taken = buf.take(step)
        assert taken.prompt_indices == indices
        assert buf.allowed(engine_version=step, steps_taken=step + 1) == 0  # nothing generated while training


def test_steady_state_pipeline_stays_within_the_bound_without_resampling():
    """Engines generate with the version pushed before each call; m steps ahead is allowed."""
    for m in (1, 2):
        buf, p = RolloutBuffer(prompts_per_step=4, max_staleness=m), 4
        in_flight: list[tuple[int, int]] = []
        for step in range(10):
            version = step  # pushed after the previous step
            in_flight += [(i, version) for i in buf.issue(buf.allowed(version, step))]
            while (taken := buf.take(step)) is None:
                index, v = in_flight.pop(0)
                buf.complete(index, group(v))
            assert all(step - g.policy_version <= m for g in taken.groups)
            assert taken.stale_resampled == 0
            assert len(taken.groups) == p
        assert buf.outstanding <= (m + 1) * p


def test_too_old_groups_are_reissued_counted_and_never_trained():
    buf = RolloutBuffer(prompts_per_step=2, max_staleness=1)
    first = buf.issue(4)
    old = {i: group(version=0) for i in first}
    for i in first:
        buf.complete(i, old[i])
    # The learner is at step 3 already (scripted): version-0 groups are 3 steps old.
    assert buf.take(3) is None
    assert buf.outstanding == 0
    again = buf.issue(4)
    assert sorted(again) == sorted(first)  # the same prompts, re-sampled
    for i in again:
        buf.complete(i, group(version=3))
    taken = buf.take(3)
    assert taken.stale_resampled == 4
    assert all(g.policy_version == 3 for g in taken.groups)
    assert not {s.sample_id for g in taken.groups for s in g.samples} & {
        s.sample_id for g in old.values() for s in g.samples}


def test_random_schedule_never_loses_nor_duplicates_and_respects_the_bound():
    """Out-of-order completion, random lags, dropped groups: every issued prompt is trained,
    dropped, re-issued or still pending; no sample twice; the bound always holds."""
    rng = random.Random(0)
    m, p = 1, 3
    buf = RolloutBuffer(prompts_per_step=p, max_staleness=m)
    pending: list[int] = []
    trained_samples: list[str] = []
    trained_prompts: list[int] = []
    dropped: list[int] = []
    resampled = 0
    issued_count: dict[int, int] = {}
    for step in range(30):
        while True:
            new = buf.issue(buf.allowed(engine_version=step, steps_taken=step) + rng.randint(0, 2))
            for i in new:
                issued_count[i] = issued_count.get(i, 0) + 1
            pending += new
            rng.shuffle(pending)
            for _ in range(rng.randint(0, len(pending))):
                index = pending.pop()
                if rng.random() < 0.1:
                    buf.drop(index)
                    dropped.append(index)
                else:
                    buf.complete(index, group(version=max(0, step - rng.randint(0, 3))))
            taken = buf.take(step)
            if taken is not None:
                break
        resampled += taken.stale_resampled
        assert all(step - s.policy_version <= m for g in taken.groups for s in g.samples)
        trained_samples += [s.sample_id for g in taken.groups for s in g.samples]
        trained_prompts += taken.prompt_indices
    assert len(trained_samples) == len(set(trained_samples))
    consumed = trained_prompts + dropped
    assert len(consumed) == len(set(consumed))  # a prompt is consumed once
    # Every stale group was counted: re-issued since, or queued for re-issue.
    assert resampled == sum(n - 1 for n in issued_count.values()) + len(buf._reissue)
    assert resampled > 0
    # Every issued prompt is consumed, queued for re-issue, or still outstanding.
    assert set(issued_count) == set(consumed) | set(buf._reissue) | set(pending) | {
        i for _, i, _ in buf._ready}
    # The data position is exact: below the watermark all consumed, above it the recorded set.
    assert set(range(buf.watermark)) | buf.consumed_above == set(consumed)


def test_resume_skips_consumed_prompts_and_reissues_unconsumed_ones():
    buf = RolloutBuffer(prompts_per_step=2, max_staleness=1, watermark=4, consumed_above={5, 7})
    assert buf.issue(4) == [4, 6, 8, 9]


def test_partial_rollout_group_is_as_old_as_its_oldest_token_span():
    """A response begun by version 0 and finished by version 2 counts as version 0 for staleness."""
    gid = "partial"
    samples = [Sample(f"{gid}-{k}", gid, [1], [2, 3, 4], [-0.5] * 3, "stop", 2, version_spans=[(0, 1), (2, 2)])
               for k in range(2)]
    assert [s.policy_version for s in samples] == [0, 0]
    buf = RolloutBuffer(prompts_per_step=1, max_staleness=1)
    (index,) = buf.issue(1)
    buf.complete(index, Group(gid, samples))
    assert buf.take(step=2) is None  # 2 - 0 > 1 although most of its tokens are version 2
    assert buf.issue(1) == [index]  # re-issued, not trained


def test_skipped_prompts_are_consumed_unsampled_and_counted():
    """A prompt too long for the model is consumed without a group: resume never issues it again."""
    buf = RolloutBuffer(prompts_per_step=2, max_staleness=0)
    first = buf.issue(buf.allowed(engine_version=0, steps_taken=0))
    buf.skip(first[1])
    assert buf.allowed(engine_version=0, steps_taken=0) == 1  # its place is issued again
    replacement = buf.issue(1)
    for index in (first[0], *replacement):
        buf.complete(index, group(version=0))
    taken = buf.take(0)
    assert (taken.prompt_indices, taken.skipped) == ([0, 2], 1) and buf.watermark == 3

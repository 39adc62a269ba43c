"""Training controls on scripted reward, length and probability streams."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from cispo.algo.advantages import compute_advantages
from cispo.algo.controls import (
    LengthCurriculum,
    dynamic_sampling_filter,
    has_signal,
    length_percentile,
    overlong_penalty,
    truncation_mask,
)
from cispo.types import Group, Sample

NAN = float("nan")


@dataclass
class G:
    name: str
    rewards: list[float]


def test_has_signal():
    assert has_signal([0, 1, 1]) and has_signal([0.5, NAN, 0.25])
    assert not has_signal([1, 1, 1]) and not has_signal([0, 0]) and not has_signal([1, NAN, NAN])
    assert not has_signal([NAN, NAN]) and not has_signal([])


def test_has_signal_agrees_with_the_advantage_zeroing_rule():
    rows = [[0, 1, 1], [1, 1, 1], [0.1, 0.1, 0.1], [1, NAN, NAN], [NAN, NAN, NAN], [0.5, NAN, 0.25]]
    adv = compute_advantages("grpo", torch.tensor(rows, dtype=torch.float64))
    for row, a in zip(rows, adv):
        assert has_signal(row) == bool((a != 0).any())


def test_dynamic_sampling_refill_loop_on_a_scripted_stream():
    # What the trainer does: pull groups from the rollout stream, filter, refill until full.
    stream = iter(
        [
            [G("a", [1, 1, 1]), G("b", [0, 1, 0]), G("c", [0, 0, 0])],
            [G("d", [NAN, 1, 1]), G("e", [0.2, 0.7, NAN])],
            [G("f", [1, 0, 0]), G("g", [0, 1, 1])],
        ]
    )
    batch, dropped, rounds = [], 0, 0
    while len(batch) < 3:
        result = dynamic_sampling_filter(next(stream))
        batch += result.kept
        dropped += result.dropped
        rounds += 1
    assert [g.name for g in batch] == ["b", "e", "f", "g"]
    assert (dropped, rounds) == (3, 3)


def test_dynamic_sampling_filter_accepts_the_shared_group_type():
    def sample(i, reward):
        return Sample(f"s{i}", "g", [1], [2], [-0.1], "stop", 0, reward=reward)

    informative = Group("g1", [sample(0, 1.0), sample(1, 0.0)])
    failed = Group("g2", [sample(2, 1.0), Sample("s3", "g2", [1], [2], [-0.1], "stop", 0, reward=0.0, reward_error="boom")])
    result = dynamic_sampling_filter([informative, failed])
    assert result.kept == [informative] and result.dropped == 1


def test_overlong_penalty_follows_dapo():
    kw = dict(max_len=100, buffer=20)
    assert overlong_penalty(50, **kw) == 0.0
    assert overlong_penalty(80, **kw) == 0.0
    assert overlong_penalty(90, **kw) == pytest.approx(-0.5)
    assert overlong_penalty(100, **kw) == pytest.approx(-1.0)
    assert overlong_penalty(101, **kw) == -1.0
    assert overlong_penalty(95, max_len=100, buffer=20, factor=0.5) == pytest.approx(-0.375)
    assert overlong_penalty(100, max_len=100, buffer=0) == 0.0 and overlong_penalty(101, max_len=100, buffer=0) == -1.0
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(10, max_len=100, buffer=101)


def test_truncation_mask():
    reasons = ["stop", "length", "repetition", "env_error"]
    assert truncation_mask(reasons, mask_truncated=True) == [1.0, 0.0, 1.0, 1.0]
    assert truncation_mask(reasons, mask_truncated=False) == [1.0] * 4


def test_length_percentile_matches_torch_quantile():
    lengths = [13, 2, 40, 7, 7, 100, 55, 1, 20]
    for q in (0, 50, 90, 99, 100):
        expected = torch.quantile(torch.tensor(lengths, dtype=torch.float64), q / 100).item()
        assert length_percentile(lengths, q) == pytest.approx(expected)


def test_curriculum_advances_only_when_near_the_cap_and_plateaued():
    cur = LengthCurriculum([100, 200, 300], near_cap=0.9, window=3, min_delta=0.05)
    # Metric still moving while lengths are near the cap: stay.
    steps = [(95, 1.0), (96, 0.8), (97, 0.6), (98, 0.5)]
    assert [cur.update(p99, m) for p99, m in steps] == [False] * 4
    # Metric flat but lengths far from the cap: stay.
    assert [cur.update(50, 0.5) for _ in range(3)] == [False] * 3 and cur.cap == 100
    # Flat and near: advance on the first step both hold.
    assert cur.update(90, 0.51) is True
    assert (cur.stage, cur.cap) == (1, 200)
    # The new stage starts its own history: a plateau needs `window` fresh steps.
    assert [cur.update(190, 0.5) for _ in range(2)] == [False, False]
    assert cur.update(190, 0.5) is True and cur.cap == 300 and cur.is_last
    assert [cur.update(300, 0.5) for _ in range(5)] == [False] * 5 and cur.cap == 300


def test_curriculum_state_round_trips():
    cur = LengthCurriculum([10, 20, 30], window=2, min_delta=0.0)
    cur.update(10, 1.0)
    cur.update(10, 1.0)
    cur.update(5, 2.0)
    restored = LengthCurriculum([10, 20, 30], window=2, min_delta=0.0)
    restored.load_state_dict(cur.state_dict())
    assert restored.cap == cur.cap == 20
    assert restored.update(20, 2.0) is cur.update(20, 2.0) is True
    with pytest.raises(ValueError, match="stage 7"):
        restored.load_state_dict({"stage": 7, "history": []})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(caps=[100, 100]), "strictly increasing"),
        (dict(caps=[]), "strictly increasing"),
        (dict(caps=[100], near_cap=0.0), "near_cap"),
        (dict(caps=[100], window=1), "window"),
        (dict(caps=[100], min_delta=-1.0), "min_delta"),
    ],
)
def test_curriculum_refuses_bad_settings(kwargs, match):
    caps = kwargs.pop("caps")
    with pytest.raises(ValueError, match=match):
        LengthCurriculum(caps, **kwargs)


def test_curriculum_plateau_is_a_range_so_a_rising_metric_works_too():
    cur = LengthCurriculum([10, 20], near_cap=1.0, window=4, min_delta=0.1)
    rewards = [0.1, 0.3, 0.5, 0.62, 0.65, 0.66, 0.68]
    moved = [cur.update(10, r) for r in rewards]
    assert moved == [False] * 6 + [True]  # last four: 0.62 .. 0.68 span 0.06 ≤ 0.1
    assert cur.cap == 20


# --------------------------------------------------------------------------- the drivers' wiring


def _group(lengths: list[int], rewards: list[float], finish: list[str]) -> Group:
    samples = [Sample(sample_id=str(i), group_id="g", prompt_ids=[1], response_ids=[5] * n,
                      behaviour_logprobs=[-1.0] * n, finish_reason=f, policy_version=0, reward=r)
               for i, (n, r, f) in enumerate(zip(lengths, rewards, finish))]
    return Group("g", samples)


def _cfg(**algo):
    from cispo.config import Config

    cfg = Config()
    cfg.rollout.max_new_tokens = 8
    for key, value in algo.items():
        setattr(cfg.algo, key, value)
    return cfg


def test_prepare_groups_shapes_the_advantages_not_the_reward_and_masks_truncated():
    from cispo.algo.groups import prepare_groups

    # Equal task rewards: no signal, except what the overlong penalty adds. Cap 8, buffer 4.
    group = _group([3, 6, 8, 8], [1.0, 1.0, 1.0, 1.0], ["stop", "stop", "stop", "length"])
    metrics = prepare_groups([group], _cfg(overlong_buffer=4, overlong_penalty=1.0, mask_truncated=True).algo, cap=8)
    penalties = [0.0, -0.5, -1.0, -1.0]
    expected = compute_advantages("grpo", torch.tensor([[1.0 + p for p in penalties]], dtype=torch.float64))[0]
    assert [s.advantage for s in group.samples] == pytest.approx(expected.tolist())
    assert [s.reward for s in group.samples] == [1.0] * 4  # the task's score is kept
    assert [sum(s.loss_mask) for s in group.samples] == [3, 6, 8, 0]  # only the "length" one is masked
    assert metrics == {"reward/overlong_penalty_mean": pytest.approx(-2.5 / 4),
                       "reward/overlong_penalized_frac": 0.75, "rollout/truncated_masked": 1.0}


def test_prepare_groups_with_the_controls_off_is_plain_advantages():
    from cispo.algo.groups import prepare_groups

    group = _group([3, 8], [0.0, 1.0], ["stop", "length"])
    metrics = prepare_groups([group], _cfg().algo, cap=8)
    assert [s.advantage for s in group.samples] == pytest.approx([-1 / 2**0.5, 1 / 2**0.5], rel=1e-5)
    assert [sum(s.loss_mask) for s in group.samples] == [3, 8]
    assert metrics == {"reward/overlong_penalty_mean": 0.0, "reward/overlong_penalized_frac": 0.0,
                       "rollout/truncated_masked": 0.0}


def test_job_curriculum_sets_the_cap_and_resumes_from_the_train_state():
    from cispo.checkpoint import TrainState
    from cispo.algo.curriculum import JobCurriculum

    cfg = _cfg(curriculum_caps=[4, 6, 8], curriculum_window=2, curriculum_min_delta=0.05, curriculum_near_cap=0.9)
    state = TrainState()
    curriculum = JobCurriculum(cfg, state)
    assert cfg.rollout.max_new_tokens == 4  # the first stage replaces the configured cap
    caps = [curriculum.step({"rollout/response_len_p99": p99, "reward/mean": r})["rollout/max_new_tokens"]
            for p99, r in [(4, 0.5), (4, 0.9), (4, 0.91)]]  # not plateaued, then plateaued at the cap
    assert caps == [4.0, 4.0, 6.0] and cfg.rollout.max_new_tokens == 6
    assert state.curriculum == {"stage": 1, "history": []}

    again = _cfg(curriculum_caps=[4, 6, 8])
    JobCurriculum(again, TrainState(**{**state.__dict__}))
    assert again.rollout.max_new_tokens == 6  # resumed at its stage
    with pytest.raises(KeyError, match="algo.curriculum_metric 'reward/mean' is not a per-step metric"):
        curriculum.step({"rollout/response_len_p99": 6.0})


def test_job_curriculum_off_logs_the_configured_cap():
    from cispo.checkpoint import TrainState
    from cispo.algo.curriculum import JobCurriculum

    cfg = _cfg()
    assert JobCurriculum(cfg, TrainState()).step({}) == {"rollout/max_new_tokens": 8.0,
                                                         "rollout/curriculum_raised": 0.0}


def test_recomputed_old_logp_keeps_the_sampler_logp_for_the_mismatch():
    from cispo.learner.batch import make_batch

    sample = Sample(sample_id="a", group_id="g", prompt_ids=[1, 2], response_ids=[3, 4],
                    behaviour_logprobs=[-0.5, -0.7], finish_reason="stop", policy_version=0, reward=1.0)
    batch = make_batch([sample], pad_id=0)
    recomputed = batch.with_old_logp(torch.full_like(batch.old_logp, -0.1))
    assert recomputed.old_logp[0].tolist() == pytest.approx([0.0, -0.1, -0.1])  # response targets only
    assert recomputed.sampler_logp[0].tolist() == pytest.approx([0.0, -0.5, -0.7])
    assert [len(c) for c in recomputed.chunks(2)] == [1, 0]  # the new field travels with the chunks


@pytest.mark.parametrize("key,value,match", [
    ("old_logp", "behaviour", "algo.old_logp: must be rollout or recompute"),
    ("curriculum_caps", [8, 8], "algo.curriculum_caps: must be positive and strictly increasing"),
    ("curriculum_caps", [8, 256], "algo.curriculum_caps: the last cap 256 must be < model.max_position_embeddings"),
    ("overlong_buffer", 9, "algo.overlong_buffer: 9 exceeds the response cap 8"),
])
def test_config_names_a_bad_control(key, value, match):
    from cispo.config import ConfigError, validate

    with pytest.raises(ConfigError, match=match):
        validate(_cfg(**{key: value}))

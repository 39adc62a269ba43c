"""Partial rollouts: responses sampled a segment at a time across weight versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from cispo.config import validate
from cispo.job import Job
from cispo.rollout.partial import PartialResponses
from cispo.types import Completion, SamplingParams, Sample


def test_segments_extend_responses_and_record_each_versions_span():
    """Bookkeeping with segments as an engine returns them: the engine moves to version 1 after the first."""
    partial = PartialResponses([[1, 2], [3]], SamplingParams(n=2, max_tokens=5), segment_tokens=2)
    prompts, params = partial.first_segment()
    assert prompts == [[1, 2], [3]] and (params.n, params.max_tokens) == (2, 2)
    partial.add([[Completion([10, 11], [-0.1, -0.2], "length", 0), Completion([12], [-0.3], "stop", 0)],
                 [Completion([13, 14], [-0.4, -0.5], "length", 0), Completion([15, 16], [-0.6, -0.7], "length", 0)]])
    prompts, params = partial.continuation()
    assert prompts == [[1, 2, 10, 11], [3, 13, 14], [3, 15, 16]] and (params.n, params.max_tokens) == (1, 2)
    partial.add([[Completion([20, 21], [-1.0, -1.1], "length", 1)], [Completion([22], [-1.2], "stop", 1)],
                 [Completion([23, 24], [-1.3, -1.4], "length", 1)]])
    prompts, params = partial.continuation()
    assert prompts == [[1, 2, 10, 11, 20, 21], [3, 15, 16, 23, 24]] and params.max_tokens == 1  # 5 - 4 left
    partial.add([[Completion([30], [-2.0], "length", 2)], [Completion([31], [-2.1], "length", 2)]])
    assert partial.continuation() is None
    (a, b), (c, d) = partial.completions()
    assert (a.token_ids, a.logprobs) == ([10, 11, 20, 21, 30], [-0.1, -0.2, -1.0, -1.1, -2.0])
    assert [x.finish_reason for x in (a, b, c, d)] == ["length", "stop", "stop", "length"]
    assert [x.policy_version for x in (a, b, c, d)] == [0, 0, 0, 0]
    assert partial.spans() == [[[(0, 2), (1, 2), (2, 1)], [(0, 1)]], [[(0, 2), (1, 1)], [(0, 2), (1, 2), (2, 1)]]]


def test_version_spans_must_cover_the_response():
    with pytest.raises(ValueError, match="version_spans .* cover 2 tokens, the response has 3"):
        Sample("s", "g", [1], [2, 3, 4], [-0.1] * 3, "stop", 0, version_spans=[(0, 1), (1, 1)])


@pytest.mark.slow
def test_vllm_responses_in_flight_continue_under_weights_pushed_meanwhile(ray_session, job_config):
    """On the real vLLM engine: a push issued while a step's responses are being sampled lands between
    segments; every sample's spans cover its tokens and log-probs, oldest version first."""
    cfg = validate(job_config(trainer__max_staleness=1, trainer__sft_steps=0, rollout__partial_rollouts=True,
                              rollout__partial_segment_tokens=2, rollout__max_new_tokens=8))
    job = Job(cfg)
    try:
        job.source.refill(steps_taken=0)  # two steps' prompts, 2 tokens at a time
        job.push_weights(version=1)  # queued on the engine between segments
        samples = [s for g in job.source.take(0).groups + job.source.take(1).groups for s in g.samples]
    finally:
        job.shutdown()
    for s in samples:
        assert len(s.response_ids) == len(s.behaviour_logprobs) == sum(n for _, n in s.version_spans)
        assert s.policy_version == s.version_spans[0][0] == 0
        assert all(a[0] < b[0] for a, b in zip(s.version_spans, s.version_spans[1:]))  # oldest first
        assert all(n % 2 == 0 for _, n in s.version_spans[:-1])  # versions change only between segments
    assert any([v for v, _ in s.version_spans] == [0, 1] for s in samples)  # continued under version 1
    assert all(lp <= 0 for s in samples for lp in s.behaviour_logprobs)
    assert (Path(cfg.trainer.output_dir) / "timeline.jsonl").exists()

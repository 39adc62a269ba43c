"""Agent turns batched per engine (`EngineTurns`): turns asked for while a call is in flight go out together,
each with its own params, on a real built-in sampler engine actor."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from actor_processes import Killer, raylet_pids

import cispo.model as cm
from cispo.rollout.engines import EngineGroup, EngineSpec, RolloutError
from cispo.rollout.episodes import EngineTurns, EpisodesStopped
from cispo.types import SamplingParams

LONG = SamplingParams(max_tokens=400)  # keeps the engine busy while the other turns arrive
SHORT = SamplingParams(temperature=0.0, max_tokens=5)
SHORTER = SamplingParams(temperature=0.0, max_tokens=3)
PAIRS = SamplingParams(n=2, max_tokens=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = cm.ModelConfig(
        vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, block_size=16, num_local_experts=4,
        layer_types=["linear_attention", "linear_attention", "full_attention"],
    )
    path = tmp_path_factory.mktemp("policy")
    cm.LightningMoELM(config).save_pretrained(path)
    return str(path)


def engine_group(checkpoint: str, max_restarts: int = 0) -> EngineGroup:
    spec = EngineSpec("builtin", checkpoint, num_cpus=1.0, num_gpus=0.0, kwargs={"num_threads": 1})
    return EngineGroup(spec, num_workers=1, generate_timeout_s=60, push_timeout_s=60, max_restarts=max_restarts)


@pytest.fixture(scope="module")
def engines(ray_session, checkpoint):
    group = engine_group(checkpoint)
    yield group
    group.shutdown()


def count_calls(engines: EngineGroup, monkeypatch) -> list[tuple[int, SamplingParams]]:
    """The (prompts, params) of every generate call issued through `engines.submit` from now on."""
    calls, submit = [], engines.submit

    def counted(index, prompts, params):
        calls.append((len(prompts), params))
        return submit(index, prompts, params)

    monkeypatch.setattr(engines, "submit", counted)
    return calls


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def busy_then(turns: EngineTurns, calls: list, threads: ThreadPoolExecutor, asks: list):
    """Start a LONG turn, and once its call is issued, the turns `asks` ((prompts, params) each): they
    arrive while the engine is busy. Futures of the long turn and of each ask."""
    long = threads.submit(turns.generate, [[1, 2, 3]], LONG)
    wait_until(lambda: len(calls) == 1)
    return long, [threads.submit(turns.generate, prompts, params) for prompts, params in asks]


def test_turns_asked_while_busy_share_calls_each_with_its_own_params(engines, monkeypatch):
    calls = count_calls(engines, monkeypatch)
    turns = EngineTurns(engines, 0, timeout_s=60, stopping=threading.Event())
    asks = [([[4, 5, 6, 7]], SHORT), ([[8, 9]], SHORT), ([[10, 11, 12], [13]], SHORT), ([[14, 15, 16]], SHORT),
            ([[17, 18]], SHORTER), ([[19]], SHORTER), ([[20, 21, 22, 23, 24]], PAIRS)]
    with ThreadPoolExecutor(len(asks) + 1) as threads:
        long, futures = busy_then(turns, calls, threads, asks)
        assert [len(c[0].token_ids) for c in long.result()] == [400]
        answers = [f.result() for f in futures]

    # 9 turns, 3 calls: the long one, then one per distinct params among the 7 that arrived meanwhile.
    assert sorted(calls, key=lambda c: c[1].max_tokens) == [(2, SHORTER), (1, PAIRS), (5, SHORT), (1, LONG)]
    for (prompts, params), answer in zip(asks, answers):
        assert len(answer) == len(prompts)
        for completions in answer:
            assert len(completions) == params.n
            assert all(len(c.token_ids) == params.max_tokens and c.finish_reason == "length"
                       and c.policy_version == 0 for c in completions)
    # Each merged turn got its own prompts' completions: greedy tokens as the prompts sampled alone.
    for (prompts, params), answer in zip(asks, answers):
        if params.temperature == 0.0:
            alone = engines.generate(prompts, params)
            assert [c[0].token_ids for c in answer] == [c[0].token_ids for c in alone]


def test_a_turn_on_an_idle_engine_goes_at_once(engines, monkeypatch):
    calls = count_calls(engines, monkeypatch)
    turns = EngineTurns(engines, 0, timeout_s=60, stopping=threading.Event())
    for _ in range(3):
        assert len(turns.generate([[1, 2]], SHORT)[0][0].token_ids) == 5
    assert calls == [(1, SHORT)] * 3


def test_stopping_fails_waiting_turns_and_answers_the_one_in_flight(engines, monkeypatch):
    calls = count_calls(engines, monkeypatch)
    turns = EngineTurns(engines, 0, timeout_s=60, stopping=threading.Event())
    with ThreadPoolExecutor(4) as threads:
        long, waiting = busy_then(turns, calls, threads, [([[4, 5]], SHORT)] * 3)
        wait_until(lambda: len(turns._waiting) == 3)
        turns.stop()
        for future in waiting:
            with pytest.raises(EpisodesStopped):
                future.result(timeout=30)
        assert len(long.result()[0][0].token_ids) == 400
    with pytest.raises(EpisodesStopped):
        turns.generate([[1]], SHORT)
    assert len(calls) == 1


def test_a_turn_waiting_past_the_deadline_fails(engines, monkeypatch):
    calls = count_calls(engines, monkeypatch)
    turns = EngineTurns(engines, 0, timeout_s=0.2, stopping=threading.Event())
    with ThreadPoolExecutor(2) as threads:
        long, (waiting,) = busy_then(turns, calls, threads, [([[4, 5]], SHORT)])
        for future in (long, waiting):
            with pytest.raises(RolloutError, match="rollout.generate_timeout_s=0.2 s"):
                future.result(timeout=30)


@pytest.mark.slow
def test_an_engine_killed_mid_batch_is_replaced_and_every_turn_answered(ray_session, checkpoint, monkeypatch):
    engines = engine_group(checkpoint, max_restarts=1)
    try:
        calls = count_calls(engines, monkeypatch)
        turns = EngineTurns(engines, 0, timeout_s=120, stopping=threading.Event())
        asks = [([[4 + k, 5]], LONG) for k in range(4)]
        # Killed while it runs the second call: the four turns that waited behind the first, merged.
        with Killer(raylet_pids(), "BuiltinSamplerWorker.generate", when=lambda: len(calls) == 2) as killer, \
                ThreadPoolExecutor(5) as threads:
            long, futures = busy_then(turns, calls, threads, asks)
            answers = [long.result()] + [f.result() for f in futures]
        assert killer.pid is not None and engines.restarts == 1
        assert calls == [(1, LONG), (4, LONG)]  # the merged call went again to the replacement, not as new calls
        assert all(len(a) == 1 and len(a[0][0].token_ids) == 400 for a in answers)
    finally:
        engines.shutdown()

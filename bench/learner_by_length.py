"""The dense learner's step with micro-batches cut by length against one padded micro-batch, side by side.

One real DeepSpeed learner rank (Ray actor) per setting, the default dense model (`model=qwen2_tiny`),
64 samples of prompts of 8-12 tokens and responses whose lengths follow one of three mixes:
  at_cap_or_early  half run to the cap, half stop within 4 tokens (a policy that either answers or rambles)
  spread           30% at the cap, the rest uniform in [4, cap) (vs_trl's 64-token runs look like this)
  uniform          every response at the cap (nothing to cut: the cost of planning alone)
For each mix and cap, `learner.micro_batches_by_length` true and false take `--steps` identical
train steps, alternating (each first half the time), after one untimed step each, each
rank stepping with every core as in the synchronous driver; the median step time of each and the ratio
(padded / by length: above 1 is faster by length) are printed with the tokens each computes.

    .venv/bin/python bench/learner_by_length.py [--caps 64,256] [--steps 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import ray

from cispo.algo.losses import resolve_loss
from cispo.config import Config
from cispo.envs.addition import AdditionTask
from cispo.learner.batch import make_batch
from cispo.learner.group import LearnerGroup
from cispo.learner.micro import plan_micro_batches
from cispo.policy import create_policy
from cispo.types import Sample

MIXES = {
    "at_cap_or_early": lambda rng, cap: cap if rng.random() < 0.5 else rng.randint(1, 4),
    "spread": lambda rng, cap: cap if rng.random() < 0.3 else rng.randint(4, cap - 1),
    "uniform": lambda rng, cap: cap,
}


def samples(mix: str, cap: int, n: int = 64, vocab: int = 15) -> list[Sample]:
    rng = random.Random(f"{mix}/{cap}")
    out = []
    for i in range(n):
        length = MIXES[mix](rng, cap)
        out.append(Sample(sample_id=str(i), group_id=str(i // 8), prompt_ids=[1] + [rng.randrange(3, vocab) for _ in
                                                                                 range(rng.randint(7, 11))],
                          response_ids=[rng.randrange(3, vocab) for _ in range(length)],
                          behaviour_logprobs=[-rng.uniform(1.5, 3.0) for _ in range(length)], finish_reason="stop",
                          policy_version=0, reward=float(i % 2), advantage=rng.uniform(-1.0, 1.0)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caps", default="64,256", help="response caps, comma-separated")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = Config()
    cfg.model.arch, cfg.model.max_position_embeddings = "qwen2", 512
    cfg.learner.lr = 1e-5  # small: the weights barely move, so the settings time the same work
    policy = str(create_policy(cfg.model, AdditionTask.build_tokenizer(), Path(tempfile.mkdtemp()) / "policy"))
    groups = {}
    for by_length in (True, False):
        cfg.learner.micro_batches_by_length = by_length
        groups[by_length] = LearnerGroup(cfg, policy, resolve_loss(cfg.algo, cfg.rollout.max_new_tokens))
        groups[by_length].use_idle_cores()  # as the synchronous driver does: each steps with every core, in turn
    print(f"{'cap':>4} {'mix':<16} {'padded tok':>10} {'by-length tok':>13} {'parts':>5} {'padded s':>9} "
          f"{'by-length s':>11} {'ratio':>6}")
    try:
        for cap in (int(c) for c in args.caps.split(",")):
            for mix in MIXES:
                batch = make_batch(samples(mix, cap), pad_id=0)
                lengths = batch.attention_mask.sum(-1)
                [plan] = plan_micro_batches([lengths], 1, cfg.learner.micro_batch_size, by_length=True)
                computed = sum(len(rows) * int(lengths[rows].max()) for rows in plan)
                times = {True: [], False: []}
                for step in range(args.steps + 1):
                    for by_length in (True, False) if step % 2 else (False, True):  # each goes first half the time
                        group = groups[by_length]
                        started = time.perf_counter()
                        group.train_step(batch)
                        if step:  # the first step of each pays one-off allocations
                            times[by_length].append(time.perf_counter() - started)
                padded_s, by_length_s = statistics.median(times[False]), statistics.median(times[True])
                print(f"{cap:>4} {mix:<16} {batch.attention_mask.numel():>10} {computed:>13} {len(plan):>5} "
                      f"{padded_s:>9.3f} {by_length_s:>11.3f} {padded_s / by_length_s:>5.2f}x", flush=True)
    finally:
        for group in groups.values():
            group.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()

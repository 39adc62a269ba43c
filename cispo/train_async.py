"""The asynchronous driver: the engines generate the next groups while the learner trains.

It differs from `train.py` in one visible way: generation is issued before the
learner step (`job.source.refill`) and runs on the engine actors while the learner
trains; scored groups wait in a bounded buffer. `trainer.max_staleness` (>= 1 here)
is exact: a sample sampled by policy version v is trained at learner step s (the step
that produces version s + 1) only if s - v <= max_staleness; groups that grow older
are re-sampled and counted (`rollout/stale_groups_resampled`), never trained on and
never silently dropped. CISPO's IS weights use the behaviour log-probs the engine
returned, so they correct the lag without any change to the loss.

With `rollout.partial_rollouts` a response may be sampled by several versions (one
per segment, `Sample.version_spans`); its version for the staleness rule is the
oldest, so the bound holds for every token.

What overlaps: generation with the learner step, and scoring with generation. The
weight push queues behind the generation already issued to an engine (an engine
actor runs one call at a time) and keeps its timeout (`WeightPushError`). Resume is
exact: the checkpoint keeps the consumed prompts; prompts in flight at the checkpoint
are issued again.
"""

from __future__ import annotations

import time

from cispo.config import Config
from cispo.job import Job
from cispo.step import StepBook


def train_async(cfg: Config, learner_restarts: int = 0) -> dict[str, float]:
    job = Job(cfg, learner_restarts)
    try:
        with StepBook(job) as book:
            job.warm_up()
            for step in range(job.state.step, cfg.trainer.steps):
                started = time.perf_counter()
                job.source.refill(steps_taken=step)  # the engines generate ahead while the learner trains below
                taken = job.source.take(step)  # the oldest groups with step - version <= max_staleness
                learned = job.learn(taken.groups)  # advantages, one learner update
                learned["perf/push_s"] = job.push_weights(version=step + 1)  # queues behind the generation issued
                book.record(step, taken, learned, started)
            return book.finish()
    finally:
        job.shutdown()

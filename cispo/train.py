"""The synchronous driver: generate -> score -> advantages -> learner step -> push weights -> eval/save.

Every sample is trained on by the policy version that sampled it (max_staleness 0):
the rollout source issues a step's prompts only when the step asks for its groups.
The asynchronous driver, `train_async.py`, differs in one visible way: it issues the
next generation before the learner step.
"""

from __future__ import annotations

import time

from cispo.config import Config
from cispo.job import Job
from cispo.step import StepBook


def train(cfg: Config, learner_restarts: int = 0) -> dict[str, float]:
    job = Job(cfg, learner_restarts)
    try:
        with StepBook(job) as book:
            if cfg.learner.use_idle_cores and not cfg.learner.num_gpus_per_rank:
                threads = job.learner.use_idle_cores()  # nothing else runs while the learner steps
                job.tracker.log_static({"learner/threads": min(threads)})
            job.warm_up()
            for step in range(job.state.step, cfg.trainer.steps):
                started = time.perf_counter()
                taken = job.source.take(step)  # this step's prompts, generated and scored now by version `step`
                learned = job.learn(taken.groups)  # advantages, one learner update
                learned["perf/push_s"] = job.push_weights(version=step + 1)
                book.record(step, taken, learned, started)
            return book.finish()
    finally:
        job.shutdown()

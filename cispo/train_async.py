"""The asynchronous driver: the engines generate the next groups while the learner trains.

It differs from `train.py` in one visible way: generation is issued before the
learner step (`producer.refill`) and runs on the engine actors while the learner
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
actor runs one call at a time) and keeps its timeout (`WeightPushError`).

Every trained sample is recorded in `output_dir/trained_samples.jsonl` (one line per
step: ids, versions, prompt indices; `cispo.trained_samples`) so the staleness bound and "trained at most
once" can be checked from the run itself. Resume is exact: the checkpoint keeps the
consumed prompts (`async_prompts.json`); prompts in flight at the checkpoint are
issued again.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from cispo.async_rollout import RolloutProducer
from cispo.checkpoint import checkpoint_dir, latest_checkpoint
from cispo.collect import Rollouts, prepare_groups, sampling_params
from cispo.config import Config
from cispo.curriculum import JobCurriculum
from cispo.job import Job
from cispo.rollout_buffer import RolloutBuffer
from cispo.step_metrics import learner_metrics, rollout_metrics
from cispo.trained_samples import TRAINED_SAMPLES_FILE, TrainedSamplesLog  # noqa: F401 - tests read the file by it
from cispo.update import learner_update

PROMPTS_FILE = "async_prompts.json"  # in a checkpoint directory: consumed prompts above the watermark


def train_async(cfg: Config, learner_restarts: int = 0) -> dict[str, float]:
    job = Job(cfg, learner_restarts)
    tc, tracker = cfg.trainer, job.tracker
    buffer = restore_buffer(job)
    curriculum = JobCurriculum(cfg, job.state)  # before the producer: it samples with the stage's cap
    trained_log = TrainedSamplesLog(job.out, job.state.step if job.resumed else None)
    rewards_per_step: list[float] = []
    samples_total, wall = 0, 0.0
    producer = None
    try:
        if not job.resumed and tc.sft_steps > 0:
            tracker.log_static(job.warm_up())
        producer = RolloutProducer(cfg, job, buffer)
        for step in range(job.state.step, tc.steps):
            t0 = time.perf_counter()
            producer.refill(steps_taken=step)  # the engines generate ahead while the learner trains below
            taken = producer.take(step)  # the oldest groups with step - version <= max_staleness
            controls = prepare_groups(taken.groups, cfg)
            samples = [s for g in taken.groups for s in g.samples]
            t1 = time.perf_counter()
            learned = learner_update(job.learner, samples, cfg, job.tokenizer.pad_token_id)
            t2 = time.perf_counter()
            push_s = job.push_weights(version=step + 1)  # queues behind the generation issued before it
            producer.timeline.record("learn", t1, t2)
            producer.timeline.record("push", t2, t2 + push_s)
            job.state.step, job.state.next_prompt = step + 1, buffer.watermark
            step_s = time.perf_counter() - t0
            generate_s, reward_s = producer.timings()
            staleness = [step - s.policy_version for s in samples]
            rollouts = Rollouts(taken.groups, generate_s, reward_s, dropped_groups=taken.dropped, controls=controls)
            metrics = {**rollout_metrics(rollouts), **learner_metrics(learned), **job.fault_metrics(),
                       "rollout/staleness_mean": statistics.fmean(staleness),
                       "rollout/staleness_max": float(max(staleness)),
                       "rollout/stale_groups_resampled": float(taken.stale_resampled),
                       # Partial rollouts: samples whose tokens more than one policy version sampled.
                       "rollout/multi_version_frac": statistics.fmean(len(s.version_spans) > 1 for s in samples),
                       "rollout/outstanding_groups": float(buffer.outstanding),
                       "perf/wait_s": t1 - t0, "perf/learner_s": t2 - t1, "perf/push_s": push_s,
                       "perf/step_s": step_s, "perf/samples_per_s": len(samples) / step_s,
                       "policy/version": job.state.version,
                       # Consumption is out of order: every prompt below next_prompt is consumed.
                       "data/prompts_trained": float(len(taken.prompt_indices)),
                       "data/next_prompt": float(buffer.watermark)}
            metrics.update(curriculum.step(metrics))
            producer.params = sampling_params(cfg, job.tokenizer.eos_token_id)  # the curriculum's cap from now on
            trained_log.record(job.state.step, taken.prompt_indices, samples)
            if tc.eval_every and job.state.step % tc.eval_every == 0:
                metrics.update(job.evaluate())
            tracker.log(job.state.step, metrics)
            if step % cfg.logger.table_every == 0:
                tracker.log_samples(job.state.step, samples)
            if tc.save_every and job.state.step % tc.save_every == 0 and job.state.step < tc.steps:
                save(job, buffer)
            rewards_per_step.append(metrics["reward/mean"])
            samples_total, wall = samples_total + len(samples), wall + step_s
        producer.stop()
        final_eval = job.evaluate()
        return job.finish(final_eval, save(job, buffer), rewards_per_step, samples_total, wall)
    finally:
        if producer is not None:
            producer.stop()
        trained_log.close()
        job.shutdown()


def restore_buffer(job: Job) -> RolloutBuffer:
    """A buffer at the job's data position: the watermark, plus the prompts above it a checkpoint consumed."""
    consumed: set[int] = set()
    resumed = latest_checkpoint(job.out) if job.resumed else None
    if resumed is not None and (resumed[0] / PROMPTS_FILE).exists():
        consumed = set(json.loads((resumed[0] / PROMPTS_FILE).read_text())["consumed_above_next_prompt"])
    return RolloutBuffer(job.cfg.rollout.prompts_per_step, job.cfg.trainer.max_staleness,
                         watermark=job.state.next_prompt, consumed_above=consumed)


def save(job: Job, buffer: RolloutBuffer) -> Path:
    """The job's checkpoint plus the consumed prompts above the watermark (written first:
    the checkpoint counts as complete only once `job.save` writes its trainer state)."""
    directory = checkpoint_dir(job.out, job.state.step)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PROMPTS_FILE).write_text(
        json.dumps({"consumed_above_next_prompt": sorted(buffer.consumed_above)}))
    return job.save()


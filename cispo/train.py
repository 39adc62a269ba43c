"""The synchronous driver: generate -> score -> advantages -> learner step -> push weights -> eval/save.

Every sample is trained on by the policy version that sampled it (max_staleness 0).
The asynchronous driver, `train_async.py`, differs in one visible way: it starts the
next generation before the learner step.
"""

from __future__ import annotations

import time

from cispo.collect import collect
from cispo.config import Config
from cispo.curriculum import JobCurriculum
from cispo.diagnostics import mismatch_alarm
from cispo.job import Job
from cispo.step_metrics import learner_metrics, rollout_metrics
from cispo.trained_samples import TrainedSamplesLog
from cispo.update import learner_update, loss_params  # noqa: F401 - loss_params: imported from here by tests


def train(cfg: Config, learner_restarts: int = 0) -> dict[str, float]:
    job = Job(cfg, learner_restarts)
    tc, tracker = cfg.trainer, job.tracker
    curriculum = JobCurriculum(cfg, job.state)
    trained_log = TrainedSamplesLog(job.out, job.state.step if job.resumed else None)
    rewards_per_step: list[float] = []
    samples_total, wall = 0, 0.0
    try:
        if cfg.learner.use_idle_cores and not cfg.learner.num_gpus_per_rank:
            threads = job.learner.use_idle_cores()  # nothing else runs while the learner steps
            tracker.log_static({"learner/threads": min(threads)})
        if not job.resumed and tc.sft_steps > 0:
            tracker.log_static(job.warm_up())
        for step in range(job.state.step, tc.steps):
            t0 = time.perf_counter()
            prompt_start = job.state.next_prompt
            rollouts = collect(cfg, job.next_rows, job.rollout, job.rewards, job.tokenizer)
            t1 = time.perf_counter()
            learned = learner_update(job.learner, rollouts.samples, cfg, job.tokenizer.pad_token_id)
            t2 = time.perf_counter()
            push_s = job.push_weights(version=step + 1)
            job.state.step = step + 1
            step_s = time.perf_counter() - t0
            metrics = {**rollout_metrics(rollouts), **learner_metrics(learned), **job.fault_metrics(),
                       "perf/learner_s": t2 - t1, "perf/push_s": push_s, "perf/step_s": step_s,
                       "perf/samples_per_s": len(rollouts.samples) / step_s, "policy/version": job.state.version,
                       # The prompts [start, end) of the task's stream this step consumed: resume is exact.
                       "data/prompt_start": prompt_start, "data/prompt_end": job.state.next_prompt}
            # Synchronous: both sides hold the same weights, so any gap is numerical.
            alarm = mismatch_alarm({"prob_corr": metrics["learner/prob_corr"], "tokens": metrics["learner/tokens"],
                                    "prob_abs_diff_mean": metrics["learner/prob_abs_diff"]},
                                   min_corr=cfg.algo.mismatch_alarm)
            if alarm:
                tracker.alert("train/inference mismatch", alarm)
            metrics.update(curriculum.step(metrics))  # the response cap of the next step
            # Without dynamic sampling every prompt consumed is trained; with it, the dropped ones are counted.
            trained_log.record(job.state.step, list(range(prompt_start, job.state.next_prompt)), rollouts.samples)
            if tc.eval_every and job.state.step % tc.eval_every == 0:
                metrics.update(job.evaluate())
            tracker.log(job.state.step, metrics)
            if step % cfg.logger.table_every == 0:
                tracker.log_samples(job.state.step, rollouts.samples)
            if tc.save_every and job.state.step % tc.save_every == 0 and job.state.step < tc.steps:
                job.save()
            rewards_per_step.append(metrics["reward/mean"])
            samples_total, wall = samples_total + len(rollouts.samples), wall + step_s
        final_eval = job.evaluate()
        return job.finish(final_eval, job.save(), rewards_per_step, samples_total, wall)
    finally:
        trained_log.close()
        job.shutdown()

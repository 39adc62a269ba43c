"""One learner step's bookkeeping, the same in both drivers: its metrics (stable namespaced
names: rollout/, reward/, learner/, env/, perf/, data/), the length curriculum, the record of
what was trained, evaluation, logging and checkpoints."""

from __future__ import annotations

import statistics
import time

from cispo.algo.controls import length_percentile
from cispo.algo.curriculum import JobCurriculum
from cispo.algo.diagnostics import mismatch_alarm
from cispo.job import Job
from cispo.rollout.buffer import StepTake
from cispo.trained_samples import TrainedSamplesLog
from cispo.types import Sample


class StepBook:
    """What both drivers do after a learner step and the push that follows it."""

    def __init__(self, job: Job):
        self.job = job
        self.curriculum = JobCurriculum(job.cfg, job.state)
        job.source.params = job.sampling_params()  # at the curriculum stage's cap
        self.trained_log = TrainedSamplesLog(job.out, lambda ids: job.tokenizer.batch_decode([[i] for i in ids]))
        self.rewards_per_step: list[float] = []
        self.samples, self.seconds = 0, 0.0
        self.first_started: float | None = None  # when the first step of this run began
        self.evaluation: tuple[int, dict[str, float]] | None = None  # the last evaluation: (step, metrics)

    def record(self, step: int, taken: StepTake, learned: dict[str, float], started: float) -> None:
        """Step `step`, begun at `started` (time.perf_counter()), trained `taken` (`learned`: what
        `Job.learn` returned, with perf/push_s) and pushed version step + 1."""
        job, tc = self.job, self.job.cfg.trainer
        if self.first_started is None:
            self.first_started = started
        job.state.step, job.state.next_prompt = step + 1, job.source.buffer.watermark
        samples = [s for g in taken.groups for s in g.samples]
        step_s = time.perf_counter() - started
        generate_s, reward_s = job.source.timings()
        staleness = [step - s.policy_version for s in samples]
        metrics = {**rollout_metrics(samples), **learned, **job.fault_metrics(),
                   "rollout/groups": float(len(taken.groups)),
                   "rollout/dropped_zero_variance_groups": float(taken.dropped),
                   "rollout/staleness_mean": statistics.fmean(staleness),
                   "rollout/staleness_max": float(max(staleness)),
                   "rollout/stale_groups_resampled": float(taken.stale_resampled),
                   # Partial rollouts: samples whose tokens more than one policy version sampled.
                   "rollout/multi_version_frac": statistics.fmean(len(s.version_spans) > 1 for s in samples),
                   "rollout/outstanding_groups": float(job.source.buffer.outstanding),
                   "perf/generate_s": generate_s, "perf/reward_s": reward_s,
                   # Waiting for the step's groups: what generation and scoring did not hide.
                   "perf/wait_s": step_s - learned["perf/learner_s"] - learned["perf/push_s"],
                   "perf/step_s": step_s, "perf/samples_per_s": len(samples) / step_s,
                   "policy/version": job.state.version,
                   # Consumption may be out of order: every prompt below next_prompt is consumed.
                   "data/prompts_trained": float(len(taken.prompt_indices)),
                   "data/dropped_rows": float(taken.skipped),  # prompts too long for the model (task.overlong_prompt)
                   "data/next_prompt": float(job.state.next_prompt)}
        if job.cfg.trainer.max_staleness == 0:  # both sides held the same weights: any gap is numerical
            alarm = mismatch_alarm({"prob_corr": metrics["learner/prob_corr"], "tokens": metrics["learner/tokens"],
                                    "prob_abs_diff_mean": metrics["learner/prob_abs_diff"]},
                                   min_corr=job.cfg.algo.mismatch_alarm)
            if alarm:
                job.tracker.alert("train/inference mismatch", alarm)
        failed = [s for s in samples if not s.trainable]
        if failed:  # masked from the loss and counted: said on the console too, once per step
            example = (failed[0].reward_error or f"reward {failed[0].reward}").strip().splitlines()[-1]
            job.tracker.alert("reward errors", f"step {step + 1}: {len(failed)} of {len(samples)} samples could not "
                                               f"be scored and are masked; e.g. {example}")
        metrics.update(self.curriculum.step(metrics))
        job.source.params = job.sampling_params()  # the curriculum's cap from now on
        shown = job.cfg.logger.table_rows if step % job.cfg.logger.table_every == 0 else 0  # as the W&B table
        self.trained_log.record(job.state.step, taken.prompt_indices, samples, shown)
        # Since the first step began, bookkeeping and logging of the steps before included (loop to loop).
        metrics["perf/wall_s"] = time.perf_counter() - self.first_started
        if tc.eval_every and job.state.step % tc.eval_every == 0:
            self.evaluation = (job.state.step, job.evaluate())
            metrics.update(self.evaluation[1])
        job.tracker.log(job.state.step, metrics)
        if step % job.cfg.logger.table_every == 0:
            job.tracker.log_samples(job.state.step, samples)
        if tc.save_every and job.state.step % tc.save_every == 0 and job.state.step < tc.steps:
            job.save()
            job.write_report()
        self.rewards_per_step.append(metrics["reward/mean"])
        self.samples, self.seconds = self.samples + len(samples), self.seconds + step_s

    def finish(self) -> dict:
        """The final evaluation (the last step's, when it evaluated: not run twice) and checkpoint; the
        run's key figures. Calls still in flight are left unconsumed (a resumed job issues their prompts again)."""
        job = self.job
        job.source.stop(job.out)
        if self.evaluation is None or self.evaluation[0] != job.state.step:
            self.evaluation = (job.state.step, job.evaluate())
            job.tracker.log(job.state.step, self.evaluation[1], advance=False)
        return job.finish(self.evaluation[1], job.save(), self.rewards_per_step, self.samples, self.seconds)

    def __enter__(self) -> "StepBook":
        return self

    def __exit__(self, *exc) -> None:
        self.trained_log.close()


def episode_metrics(episodes: list[dict]) -> dict[str, float]:
    """Per-episode means of an agent's turns, tool calls (by tool), malformed calls, tool timeouts and
    seconds (sandbox start, turns, grading), and how often it submitted (`cispo.envs.agent`)."""
    n = len(episodes)
    out = {"env/turns_mean": sum(e["turns"] for e in episodes) / n,
           "env/submit_rate": sum(bool(e["submitted"]) for e in episodes) / n,
           "env/malformed_calls_mean": sum(e["malformed_calls"] for e in episodes) / n,
           "env/tool_timeouts_mean": sum(e["tool_timeouts"] for e in episodes) / n}
    for tool in sorted({name for e in episodes for name in e["tool_calls"]}):
        out[f"env/tool_calls_{tool}_mean"] = sum(e["tool_calls"].get(tool, 0) for e in episodes) / n
    for part in ("sandbox", "turns", "grade"):
        out[f"env/{part}_s_mean"] = sum(e.get(f"{part}_s", 0.0) for e in episodes) / n
    return out


def rollout_metrics(samples: list[Sample]) -> dict[str, float]:
    scored = [s.reward for s in samples if s.trainable]
    lengths = [len(s.response_ids) for s in samples]
    passes = [bool(s.reward_details.get("pass", s.reward == 1.0)) for s in samples if s.trainable]
    out = {
        "reward/mean": statistics.fmean(scored) if scored else float("nan"),
        "reward/std": statistics.pstdev(scored) if len(scored) > 1 else 0.0,
        "reward/pass_rate": statistics.fmean(passes) if passes else float("nan"),
        "reward/errors": float(len(samples) - len(scored)),
        "reward/error_frac": (len(samples) - len(scored)) / max(len(samples), 1),
        "rollout/response_len_mean": statistics.fmean(lengths) if lengths else 0.0,
        "rollout/response_len_max": float(max(lengths, default=0)),
        "rollout/response_len_p99": length_percentile(lengths) if lengths else 0.0,
    }
    for reason in ("stop", "length", "repetition", "env_error"):
        out[f"rollout/finish_{reason}_frac"] = sum(s.finish_reason == reason for s in samples) / max(len(samples), 1)
    # Environments that grade (the SWE reward's resolved/unresolved/patch_failed/timeout/infra_error; an agent
    # episode's unsubmitted with env.grade_unsubmitted=false) report a status.
    statuses = [s.reward_details.get("status") for s in samples]
    for name in sorted({st for st in statuses if isinstance(st, str)}):
        out[f"env/status_{name}_frac"] = statuses.count(name) / len(samples)
    episodes = [s.reward_details for s in samples if "tool_calls" in s.reward_details]
    if episodes:
        out.update(episode_metrics(episodes))
    advantages = [s.advantage for s in samples]
    out["learner/advantage_mean"] = statistics.fmean(advantages) if advantages else 0.0
    out["learner/advantage_abs_mean"] = statistics.fmean(abs(a) for a in advantages) if advantages else 0.0
    out["learner/zero_advantage_frac"] = sum(a == 0 for a in advantages) / max(len(advantages), 1)
    return out

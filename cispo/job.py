"""Everything a training job holds: Ray, the task, the policy files, and its actors.

Both drivers (synchronous `train.py`, asynchronous `train_async.py`) build a `Job`,
so start-up, resume, evaluation and checkpointing are written once.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import ray

from cispo.batch import sft_batch
from cispo.checkpoint import TrainState, checkpoint_dir, deepspeed_dir, latest_checkpoint, tag, write_state
from cispo.config import Config, resume_mode
from cispo.diagnostics import pass_at_k
from cispo.learner_group import LearnerGroup
from cispo.policy import create_policy
from cispo.reward.pool import RewardPool
from cispo.rollout.group import EngineSpec, RolloutGroup
from cispo.tasks import make_task
from cispo.tracking import Tracker, format_summary
from cispo.types import SamplingParams


def connect_ray(cfg: Config) -> None:
    if ray.is_initialized():
        return
    if cfg.ray.address:
        # On a cluster the job's own runtime_env (`ray job submit --runtime-env-json`) governs.
        ray.init(address=cfg.ray.address, log_to_driver=False)
    else:
        # A local Ray's actors get the driver's W&B, DeepSpeed and vLLM settings.
        runtime_env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("WANDB_", "DS_", "VLLM_"))}}
        ray.init(num_cpus=cfg.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed(cfg))),
                 runtime_env=runtime_env, log_to_driver=False, include_dashboard=False)


def cpus_needed(cfg: Config) -> float:
    """Logical CPUs the job's actors reserve. A local Ray offers at least this many, so a
    laptop (or this 2-core CI machine) runs the same job a cluster does, time-shared."""
    return (cfg.learner.world_size * cfg.learner.num_cpus_per_rank
            + cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker)


class Job:
    def __init__(self, cfg: Config, learner_restarts: int = 0):
        """`learner_restarts`: times the supervisor restarted this job after a learner rank died."""
        self.cfg, self.learner_restarts = cfg, learner_restarts
        self.out = Path(cfg.trainer.output_dir).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        connect_ray(cfg)
        self.task = make_task(cfg.task)
        self.state = TrainState()
        resume = resume_mode(cfg.trainer.resume)
        resumed = latest_checkpoint(self.out) if resume != "false" else None
        if resumed is not None:
            ckpt, self.state = resumed
            policy_dir = ckpt / "hf"
        else:
            if resume != "true":
                self._clear_previous_run()
            policy_dir = Path(cfg.model.path) if cfg.model.path else self.out / "init"
            if not cfg.model.path:
                create_policy(cfg.model, self.task.build_tokenizer(), policy_dir)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
        with ExitStack() as started:  # a part that fails to start stops the actors started before it
            self.learner = LearnerGroup(cfg, str(policy_dir))
            started.callback(self.learner.shutdown)
            if resumed is not None:
                self.learner.load_checkpoint(str(deepspeed_dir(self.out)), tag(self.state.step))
            r = cfg.rollout
            kwargs = ({"dtype": r.dtype, "max_model_len": cfg.model.max_position_embeddings,
                       "kv_cache_gib": r.kv_cache_gib}
                      if r.engine == "vllm" else {"num_threads": max(1, int(r.num_cpus_per_worker))})
            self.rollout = RolloutGroup(
                EngineSpec(r.engine, str(policy_dir), r.num_cpus_per_worker, r.num_gpus_per_worker, kwargs,
                           cfg.trainer.seed, dict(r.resources)),
                r.num_workers, r.generate_timeout_s, r.weight_push_timeout_s, max_restarts=r.max_restarts)
            started.callback(self.rollout.shutdown)
            rw = cfg.reward
            self.rewards = RewardPool(rw.fn, rw.timeout_s, rw.max_error_fraction, rw.num_workers, rw.batched)
            started.callback(self.rewards.shutdown)
            self.resumed = resumed is not None
            if self.resumed:  # the engines loaded the checkpoint's weights but count versions from 0
                self.push_weights(self.state.version)
            self.tracker = Tracker(cfg, cfg.trainer.steps, self.state.step)
            started.pop_all()

    def fault_metrics(self) -> dict[str, float]:
        """Actors this job replaced after they died (or hung), so far: none of it is silent."""
        return {"faults/rollout_restarts": float(self.rollout.restarts),
                "faults/reward_worker_restarts": float(self.rewards.restarts),
                "faults/learner_restarts": float(self.learner_restarts)}

    def _clear_previous_run(self) -> None:
        """A fresh (non-resume) job in a used output_dir starts clean: no stale checkpoint or W&B run."""
        for name in ("checkpoints", "init", "wandb", "wandb_run_id", "metrics.jsonl"):
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def next_rows(self, n: int):
        rows = [self.task.row(i) for i in range(self.state.next_prompt, self.state.next_prompt + n)]
        self.state.next_prompt += n
        return rows

    def push_weights(self, version: int) -> float:
        seconds = self.rollout.push_weights(self.learner.weights_ref(), version)
        self.state.version = version
        return seconds

    def warm_up(self) -> dict[str, float]:
        """Supervised warm-up on the task's reference answers, then the engines get the weights."""
        tc = self.cfg.trainer
        losses = []
        for step in range(tc.sft_steps):
            pairs = [self.task.reference_pair(step * tc.sft_batch_size + i) for i in range(tc.sft_batch_size)]
            prompts = [self.tokenizer(p).input_ids for p, _ in pairs]
            answers = [self.tokenizer(a, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
                       for _, a in pairs]
            losses.append(self.learner.sft_step(sft_batch(prompts, answers, self.tokenizer.pad_token_id),
                                                tc.sft_lr)["sft_loss"])
        self.push_weights(0)
        return {"sft/loss_first": losses[0], "sft/loss_last": losses[-1]} if losses else {}

    def evaluate(self) -> dict[str, float]:
        """The task's held-out prompts: greedy accuracy and, with trainer.eval_samples = n > 0,
        pass@k of n samples per prompt at the training temperature (unbiased estimator, Chen et
        al. 2021) for k = 1, 2, 4, ..., n. A response passes as in training: the reward's
        `pass` detail, else a score of 1. Failed scorings count in eval/errors, never as passes."""
        r, n = self.cfg.rollout, self.cfg.trainer.eval_samples
        rows = self.task.eval_rows()
        greedy = self._eval_results(rows, SamplingParams(n=1, temperature=0.0, max_tokens=r.max_new_tokens,
                                                         stop_token_ids=(self.tokenizer.eos_token_id,)))
        scores = [res.score for per_row in greedy for res in per_row if res.error is None]
        out = {"eval/greedy_reward": sum(scores) / max(len(scores), 1), "eval/errors": len(rows) - len(scores)}
        if n:
            sampled = self._eval_results(rows, SamplingParams(
                n=n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_tokens=r.max_new_tokens,
                stop_token_ids=(self.tokenizer.eos_token_id,)))
            correct = [sum(res.error is None and bool(res.details.get("pass", res.score == 1.0)) for res in per_row)
                       for per_row in sampled]
            for k in sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n}):
                out[f"eval/pass@{k}"] = statistics.fmean(pass_at_k(n, c, k) for c in correct)
            out["eval/errors"] += sum(res.error is not None for per_row in sampled for res in per_row)
        return out

    def _eval_results(self, rows, params: SamplingParams) -> list[list]:
        """Generate `params.n` responses per row and score them: per row, its `RewardResult`s."""
        completions = self.rollout.generate([self.tokenizer(row.prompt).input_ids for row in rows], params)
        items = [(row.prompt, self.tokenizer.decode(c.token_ids, skip_special_tokens=True), row.metadata)
                 for row, cs in zip(rows, completions) for c in cs]
        results = self.rewards.score_items(items)
        return [results[i * params.n:(i + 1) * params.n] for i in range(len(rows))]

    def save(self) -> Path:
        """HF model + tokenizer, DeepSpeed state and the trainer state of the current step."""
        t0 = time.perf_counter()
        directory = checkpoint_dir(self.out, self.state.step)
        directory.mkdir(parents=True, exist_ok=True)
        self.learner.save_hf(str(directory / "hf"))
        self.tokenizer.save_pretrained(str(directory / "hf"))
        self.learner.save_checkpoint(str(deepspeed_dir(self.out)), tag(self.state.step))
        write_state(directory, self.state)
        self.save_seconds = time.perf_counter() - t0
        return directory

    def finish(self, final_eval: dict, checkpoint: Path, rewards_per_step: list[float],
               samples: int, seconds: float) -> dict:
        """Log the final evaluation, print where things are and the summary line; the run's key figures."""
        self.tracker.log(self.state.step, final_eval, advance=False)
        summary = {
            "steps": self.state.step,
            "reward_first10": round(statistics.fmean(rewards_per_step[:10]), 4) if rewards_per_step else float("nan"),
            "reward_last10": round(statistics.fmean(rewards_per_step[-10:]), 4) if rewards_per_step else float("nan"),
            "samples_per_s": round(samples / seconds, 2) if seconds else 0.0,
        }
        print(f"W&B run ({self.tracker.mode}): {self.tracker.location}")
        print(f"checkpoint: {checkpoint / 'hf'}")
        print(f"eval greedy reward: {final_eval['eval/greedy_reward']:.3f}")
        print(format_summary(summary), flush=True)
        return {**summary, **final_eval, "optimizer_steps": self.learner.optimizer_steps(),
                "checkpoint": str(checkpoint / "hf"), "wandb": self.tracker.location}

    def shutdown(self) -> None:
        self.tracker.finish()
        self.learner.shutdown()
        self.rollout.shutdown()
        self.rewards.shutdown()

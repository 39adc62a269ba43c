"""Everything a training job holds: Ray, the task, the policy files, its actors and its rollout source.

Both drivers (synchronous `train.py`, asynchronous `train_async.py`) build a `Job`,
so start-up, resume, the warm-up, the update, evaluation and checkpointing are
written once; they differ only in when they ask the rollout source for groups.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import ray
from tqdm import tqdm

from cispo.algo.controls import has_signal
from cispo.algo.diagnostics import pass_at_k
from cispo.algo.groups import prepare_groups
from cispo.algo.losses import resolve_loss
from cispo.checkpoint import TrainState, checkpoint_dir, deepspeed_dir, latest_checkpoint, tag, write_state
from cispo.config import Config, ConfigError, resume_mode
from cispo.envs.bpe import learn_bpe_tokenizer, pair_texts
from cispo.envs.chat import OverlongPrompts, PromptEncoder, PromptError, encode_row, eval_rows_that_fit, where
from cispo.envs.agent import AgentConfig
from cispo.envs.agent_format import BUILTIN_FORMAT, agent_format
from cispo.envs.pool import SandboxPool
from cispo.envs.swe_agent import AgentPlayer, AgentTask
from cispo.envs.swe_task import SWETask
from cispo.envs.task import TaskRow, make_task
from cispo.learner.batch import sft_batch
from cispo.learner.colocated import ColocatedEngines
from cispo.learner.group import LearnerGroup
from cispo.learner.update import learner_update
from cispo.policy import create_policy
from cispo.reward.pool import RewardPool
from cispo.reward.worker import RewardResult
from cispo.rollout.buffer import RolloutBuffer
from cispo.rollout.engines import EngineGroup, Engines, EngineSpec
from cispo.rollout.episodes import EngineTurns
from cispo.rollout.source import Prompt, RolloutSource
from cispo.tracking import Tracker, format_summary, keep_steps_through
from cispo.trained_samples import TRAINED_SAMPLES_FILE
from cispo.types import Group, SamplingParams


def connect_ray(cfg: Config) -> None:
    if ray.is_initialized():
        return
    if cfg.ray.address:
        # On a cluster the job's own runtime_env (`ray job submit --runtime-env-json`) governs.
        ray.init(address=cfg.ray.address, log_to_driver=False)
    else:
        # Ray turns token authentication on for a local cluster and warns about it on every run; the
        # warning is for clusters (README: "Submitting to a Ray cluster"), so a local job mutes it.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # A local Ray's actors get the driver's W&B, DeepSpeed and vLLM settings.
        runtime_env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("WANDB_", "DS_", "VLLM_"))}}
        ray.init(num_cpus=cfg.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed(cfg))),
                 runtime_env=runtime_env, log_to_driver=False, include_dashboard=False)


# The run's records, one JSON line per step (or per evaluation), each appended as the job goes: a job
# resumed from step s's checkpoint keeps their lines through step s (it trains the steps after it again),
# a fresh job starts them empty.
RUN_RECORDS = ("metrics.jsonl", TRAINED_SAMPLES_FILE, "eval_samples.jsonl")


def cpus_needed(cfg: Config) -> float:
    """Logical CPUs the job's actors reserve. A local Ray offers at least this many, so a
    laptop (or this 2-core CI machine) runs the same job a cluster does, time-shared."""
    engines = 0 if cfg.rollout.colocate else cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker
    return cfg.learner.world_size * cfg.learner.num_cpus_per_rank + engines


def agent_config(cfg: Config) -> AgentConfig:
    """The agent episode's limits from the `env` section."""
    e = cfg.env
    return AgentConfig(max_turns=e.max_turns, max_response_tokens=e.max_response_tokens,
                       max_turn_tokens=e.max_turn_tokens, max_observation_tokens=e.max_observation_tokens,
                       command_timeout=e.tool_timeout_s, max_seconds=e.episode_timeout_s, tool_docs=e.tool_docs,
                       grade_unsubmitted=e.grade_unsubmitted)


def check_placement(cfg: Config) -> None:
    """Fail at once when no node of the cluster could ever hold a learner rank or an engine (a custom
    resource no node offers, more GPUs than any node has), rather than wait for room that never comes."""
    asks = {"a learner rank": {"CPU": cfg.learner.num_cpus_per_rank, "GPU": cfg.learner.num_gpus_per_rank,
                               **cfg.learner.resources}}
    if not cfg.rollout.colocate:  # colocated engines live in the learner ranks
        asks["a rollout engine"] = {"CPU": cfg.rollout.num_cpus_per_worker, "GPU": cfg.rollout.num_gpus_per_worker,
                                    **cfg.rollout.resources}
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    for who, ask in asks.items():
        ask = {name: amount for name, amount in ask.items() if amount}
        if not any(all(node.get(name, 0) >= amount for name, amount in ask.items()) for node in nodes):
            have = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(node.items()) if not k.startswith("node:"))
                             for node in nodes)
            key = "learner" if who == "a learner rank" else "rollout"
            raise ConfigError(f"{who} asks for {ask} ({key}.num_cpus_*/num_gpus_*/resources), and no node of the "
                              f"Ray cluster has that: {len(nodes)} node(s) with {have}")


def _stop_once_started(part: Future, name: str):
    """An exit callback that stops a part started in the background once its start ends. A start that
    failed stopped what it had started; its error is logged, unless it is the error the job raises."""
    def stop(exc_type, raised, traceback) -> bool:
        try:
            started = part.result()
        except Exception as failed:  # noqa: BLE001 - reported here or raised by the job
            if failed is not raised:
                logging.getLogger(__name__).error("%s did not start either", name, exc_info=failed)
            return False
        started.shutdown()
        return False

    return stop


class Job:
    def __init__(self, cfg: Config, learner_restarts: int = 0):
        """`learner_restarts`: times the supervisor restarted this job after a learner rank died."""
        self.cfg, self.learner_restarts = cfg, learner_restarts
        self.out = Path(cfg.trainer.output_dir).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.task = make_task(cfg.task)  # before Ray: a bad dataset or task fails at once
        self.agent = agent_config(cfg) if cfg.env.mode == "agent" else None
        if self.agent is not None:
            if not isinstance(self.task, SWETask):
                raise ConfigError(f"env.mode=agent plays SWE tasks (task=swe, swe_synthetic or swe_edit), not "
                                  f"task.name={cfg.task.name!r}")
        # An agent task in the built-in format, whose reference episodes (built once, ~13 s for 4,096 of
        # swe_edit's) serve both a learnt tokenizer and the warm-up when the policy has no tool template.
        builtin_agent_task = AgentTask(self.task, self.agent, BUILTIN_FORMAT) if self.agent else None
        connect_ray(cfg)
        check_placement(cfg)
        self.state = TrainState()
        resume = resume_mode(cfg.trainer.resume)
        resumed = latest_checkpoint(self.out) if resume != "false" else None
        if resumed is not None:
            ckpt, self.state = resumed
            policy_dir = ckpt / "hf"
            print(f"resuming from {ckpt} (step {self.state.step})", flush=True)
        else:
            if resume != "true":
                self._clear_previous_run()
            policy_dir = Path(cfg.model.path) if cfg.model.path else self.out / "init"
            if not cfg.model.path:
                create_policy(cfg.model, self._new_policy_tokenizer(builtin_agent_task or self.task), policy_dir)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
        t = cfg.task
        self.encoder = PromptEncoder(self.tokenizer, chat_template=t.chat_template, system_prompt=t.system_prompt)
        if self.agent is not None:  # the agent's prompts declare its tools, in the template's format if it has one
            fmt = agent_format(self.tokenizer, self.encoder.template) if self.encoder.uses_template else BUILTIN_FORMAT
            self.task = builtin_agent_task if fmt is BUILTIN_FORMAT else AgentTask(self.task, self.agent, fmt)
            self.encoder = PromptEncoder(self.tokenizer, chat_template=t.chat_template,
                                         system_prompt=t.system_prompt, tools=fmt.tools)
        longest_response = (cfg.env.max_response_tokens if self.agent  # an episode's turns and observations
                            else max(cfg.algo.curriculum_caps or [cfg.rollout.max_new_tokens]))
        # A prompt must leave room for the longest response the job samples.
        room = cfg.model.max_position_embeddings - longest_response
        self.overlong = OverlongPrompts(t.overlong_prompt, room)
        rows, ids = eval_rows_that_fit(self.task, self.encoder,
                                       OverlongPrompts(t.overlong_prompt, room, "data/dropped_eval_rows"))
        self.eval_prompts = [self.prompt(row, row_ids) for row, row_ids in zip(rows, ids)]  # encoded once
        # Dr.GRPO's constant is the largest response cap the job samples with: one constant for the run.
        self.loss = resolve_loss(cfg.algo, longest_response)
        self.resumed = resumed is not None
        for record in RUN_RECORDS:
            keep_steps_through(self.out / record, self.state.step if self.resumed else None)
        # A part that fails to start stops the parts started before it. The engines load in a thread while
        # the learner, the reward workers and W&B start: each part's start is mostly its own processes
        # importing torch, so started one after another they left a core idle.
        r = cfg.rollout
        with ExitStack() as started, ThreadPoolExecutor(1, thread_name_prefix="start-engines") as beside:
            self.learner = LearnerGroup(cfg, str(policy_dir), self.loss)
            started.callback(self.learner.shutdown)
            rollout = beside.submit(self._start_rollout, str(policy_dir))
            started.push(_stop_once_started(rollout, "the rollout engines"))
            rw = cfg.reward
            self.rewards = RewardPool(rw.fn, rw.timeout_s, rw.max_error_fraction, rw.num_workers, rw.batched)
            started.callback(self.rewards.shutdown)
            # Agent episodes' sandboxes: one per episode in flight, and one for grading it.
            self.sandboxes = SandboxPool(max_concurrency=2 * r.episodes_in_flight) if self.agent else None
            if self.sandboxes is not None:
                started.callback(self.sandboxes.close)
            self.tracker = Tracker(cfg, cfg.trainer.steps, self.state.step)
            started.callback(self.tracker.finish)
            if self.resumed:
                self.learner.load_checkpoint(str(deepspeed_dir(self.out)), tag(self.state.step))
            self.rollout = rollout.result()
            self.source = self._rollout_source()
            started.callback(self.source.stop, self.out)
            if self.resumed:  # the engines loaded the checkpoint's weights but count versions from 0
                self.push_weights(self.state.version)
            started.pop_all()

    def _start_rollout(self, policy_dir: str) -> Engines:
        """The rollout engines, loaded from `policy_dir`: beside the learner, or inside its ranks."""
        r = self.cfg.rollout
        if r.engine == "vllm":
            kwargs = {"dtype": r.dtype, "max_model_len": self.cfg.model.max_position_embeddings,
                      "kv_cache_gib": r.kv_cache_gib}
        else:  # a colocated sampler keeps its learner rank's threads
            kwargs = {"num_threads": None if r.colocate else max(1, int(r.num_cpus_per_worker))}
        spec = EngineSpec(r.engine, policy_dir, r.num_cpus_per_worker, r.num_gpus_per_worker, kwargs,
                          self.cfg.trainer.seed, dict(r.resources))
        if r.colocate:
            return ColocatedEngines(self.learner, spec, r.generate_timeout_s)
        return EngineGroup(spec, r.num_workers, r.generate_timeout_s, r.weight_push_timeout_s,
                           max_restarts=r.max_restarts)

    def _rollout_source(self) -> RolloutSource:
        """Where both drivers take their groups from, at the job's data position."""
        cfg, a = self.cfg, self.cfg.algo
        buffer = RolloutBuffer(cfg.rollout.prompts_per_step, cfg.trainer.max_staleness,
                               watermark=self.state.next_prompt, consumed_above=set(self.state.consumed_above))
        return RolloutSource(
            self.rollout, buffer, self.training_prompt,
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), self.rewards.score,
            self.sampling_params(), generate_timeout_s=cfg.rollout.generate_timeout_s,
            scoring_calls_in_flight=cfg.rollout.scoring_calls_in_flight,
            segment_tokens=cfg.rollout.partial_segment_tokens if cfg.rollout.partial_rollouts else 0,
            keep=(lambda group: has_signal(group.rewards)) if a.dynamic_sampling else None,
            max_dropped=max(1, a.dynamic_sampling_max_rounds) * cfg.rollout.prompts_per_step,
            play=self._agent_player(self.sampling_params()) if self.agent else None,
            episodes_in_flight=cfg.rollout.episodes_in_flight)

    def _agent_player(self, sampling: SamplingParams) -> AgentPlayer:
        return AgentPlayer(self.task, self.tokenizer, sampling, self.sandboxes)

    def sampling_params(self, n: int | None = None, temperature: float | None = None) -> SamplingParams:
        """The training sampling parameters at the current response cap (the curriculum raises it)."""
        r = self.cfg.rollout
        return SamplingParams(n=self.cfg.algo.group_size if n is None else n,
                              temperature=r.temperature if temperature is None else temperature,
                              top_p=r.top_p, top_k=r.top_k, max_tokens=r.max_new_tokens,
                              stop_token_ids=(self.tokenizer.eos_token_id,),
                              repetition_window=r.repetition_window, repetition_prob=r.repetition_prob)

    def training_prompt(self, index: int) -> Prompt | None:
        """Training row `index` as the engines and the reward see it; None when its prompt does not fit
        (task.overlong_prompt=drop: counted, the first one logged)."""
        row = self.task.row(index)
        ids = encode_row(self.task, self.encoder, row, index, "training")
        if not self.overlong.fits(len(ids), where(self.task, index, "training"), row.prompt):
            return None
        return self.prompt(row, ids)

    def prompt(self, row: TaskRow, ids: list[int]) -> Prompt:
        """The reward sees the prompt as text: the string itself, or chat messages as the template rendered them."""
        return Prompt(ids, row.prompt if isinstance(row.prompt, str) else self.encoder.text(row.prompt), row.metadata)

    def learn(self, groups: list[Group]) -> dict[str, float]:
        """Advantages (and DAPO's shaping), then the step's learner updates (learner.mini_batches x
        learner.epochs, seeded by the step: `self.state.step` is the step being trained); what the
        shaping did and the learner's metrics."""
        start = time.perf_counter()
        metrics = prepare_groups(groups, self.cfg.algo, self.cfg.rollout.max_new_tokens)
        samples = [s for g in groups for s in g.samples]
        metrics.update(learner_update(self.learner, samples, self.cfg, self.tokenizer.pad_token_id, self.state.step))
        end = time.perf_counter()
        self.source.timeline.record("learn", start, end, "learner")
        return {**metrics, "perf/learner_s": end - start}

    def fault_metrics(self) -> dict[str, float]:
        """Actors this job replaced after they died (or hung), so far: none of it is silent."""
        return {"faults/rollout_restarts": float(self.rollout.restarts),
                "faults/reward_worker_restarts": float(self.rewards.restarts),
                "faults/learner_restarts": float(self.learner_restarts)}

    def _clear_previous_run(self) -> None:
        """A fresh (non-resume) job in a used output_dir starts clean: no stale checkpoint or W&B run (its
        RUN_RECORDS are emptied where a resumed job trims them)."""
        for name in ("checkpoints", "init", "wandb", "wandb_run_id"):
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def push_weights(self, version: int) -> float:
        """The learner's weights into every engine, as policy version `version`; seconds taken."""
        start = time.perf_counter()
        if isinstance(self.rollout, ColocatedEngines):  # in memory, in each learner rank
            self.rollout.push_weights(version)
        else:
            self.rollout.push_weights(self.learner.weights_ref(), version)
        self.state.version = version
        end = time.perf_counter()
        self.source.timeline.record("push", start, end, "learner")
        return end - start

    def warm_up(self) -> None:
        """Supervised warm-up on the task's reference answers, then the engines get the weights (and with
        trainer.save_warm_up, a checkpoint at step 0); with trainer.eval_every > 0 the held-out split is
        then evaluated at step 0, before any RL step. A resumed job was warmed up before;
        trainer.sft_steps=0 turns it off."""
        tc = self.cfg.trainer
        if self.resumed:
            return
        if tc.sft_steps:
            losses, pairs = [], self._reference_pairs()
            for _ in tqdm(range(tc.sft_steps), desc="warm-up (supervised)", unit="step", dynamic_ncols=True,
                          disable=not self.cfg.logger.progress_bar):
                prompts, answers, trained = zip(*(next(pairs) for _ in range(tc.sft_batch_size)))
                batch = sft_batch(list(prompts), list(answers), self.tokenizer.pad_token_id, list(trained))
                losses.append(self.learner.sft_step(batch, tc.sft_lr)["sft_loss"])
            self.push_weights(0)
            self.tracker.log_static({"sft/loss_first": losses[0], "sft/loss_last": losses[-1]})
            if tc.save_warm_up:
                print(f"warm-up checkpoint: {self.save() / 'hf'}", flush=True)
        if tc.eval_every:
            self.tracker.log(0, self.evaluate(), advance=False)

    def _new_policy_tokenizer(self, task):
        """`task`'s tokenizer, or with model.bpe_vocab one learnt from its first 4,096 reference pairs as the
        warm-up sees them (an agent's in the built-in format: a created policy has no tool-declaring
        template), keeping the task tokenizer's chat template."""
        task_tokenizer, vocab = task.build_tokenizer(), self.cfg.model.bpe_vocab
        if not vocab:
            return task_tokenizer
        texts = []
        for index in range(4096):
            try:
                prompt, answer = task.reference_pair(index)
            except Exception as e:  # a task without reference answers: name the setting that needs them
                raise ConfigError(f"model.bpe_vocab={vocab} learns the tokenizer from the task's reference pairs, "
                                  f"and pair {index} failed: {type(e).__name__}: {e}") from e
            texts += pair_texts(prompt, answer)
        tokenizer = learn_bpe_tokenizer(texts, vocab)
        tokenizer.chat_template = task_tokenizer.chat_template  # a dataset's messages render as they did
        return tokenizer

    def _reference_pairs(self):
        """(prompt ids, answer ids, which answer ids are trained) of the task's reference pairs in order,
        skipping those longer than the model's context."""
        limit, too_long = self.cfg.model.max_position_embeddings, 0
        for index in itertools.count():
            prompt, answer = self.task.reference_pair(index)
            try:
                ids, (answer_ids, trained) = self.encoder.encode(prompt), self.encoder.encode_answer(answer)
            except PromptError as e:
                raise PromptError(f"task.name={self.cfg.task.name!r}, warm-up reference pair {index}: {e}") from e
            if len(ids) + len(answer_ids) <= limit:
                too_long = 0
                yield ids, answer_ids, trained
            else:
                too_long += 1
                if too_long == 10_000:
                    raise ValueError(f"10000 reference pairs in a row are longer than model.max_position_embeddings="
                                     f"{limit}: the warm-up has nothing to train on")

    def evaluate(self) -> dict[str, float]:
        """The task's held-out prompts: greedy accuracy and, with trainer.eval_samples = n > 0,
        pass@k of n samples per prompt at the training temperature (unbiased estimator, Chen et
        al. 2021) for k = 1, 2, 4, ..., n. A response passes as in training: the reward's
        `pass` detail, else a score of 1. Failed scorings count in eval/errors, never as passes."""
        n = self.cfg.trainer.eval_samples
        greedy = self._eval_results(self.sampling_params(n=1, temperature=0.0))
        self._record_greedy_eval(greedy)
        scores = [res.score for per_row in greedy for _, res in per_row if res.error is None]
        out = {"eval/greedy_reward": sum(scores) / max(len(scores), 1), "eval/errors": len(self.eval_prompts) - len(scores)}
        if n:
            sampled = self._eval_results(self.sampling_params(n=n))
            correct = [sum(res.error is None and bool(res.details.get("pass", res.score == 1.0)) for _, res in per_row)
                       for per_row in sampled]
            for k in sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n}):
                out[f"eval/pass@{k}"] = statistics.fmean(pass_at_k(n, c, k) for c in correct)
            out["eval/errors"] += sum(res.error is not None for per_row in sampled for _, res in per_row)
        return out

    def _record_greedy_eval(self, greedy: list[list[tuple[str, RewardResult]]]) -> None:
        """One line per evaluation in output_dir/eval_samples.jsonl: the step, and each held-out row's
        prompt, greedy response, score, reward details (an agent episode's transcript) and error.
        One of the RUN_RECORDS."""
        rows = [{"prompt": prompt.text, "response": text, "score": res.score, "details": res.details,
                 "error": res.error} for prompt, ((text, res),) in zip(self.eval_prompts, greedy)]
        with open(self.out / "eval_samples.jsonl", "a") as f:
            f.write(json.dumps({"step": self.state.step, "rows": rows}, default=str) + "\n")

    def _eval_results(self, params: SamplingParams) -> list[list[tuple[str, RewardResult]]]:
        """Generate `params.n` responses per row and score them: per row, (response text, result) of each."""
        if self.agent is not None:
            return self._eval_episodes(params)
        prompts = self.eval_prompts
        completions = self.rollout.generate([p.ids for p in prompts], params)
        items = [(p.text, self.tokenizer.decode(c.token_ids, skip_special_tokens=True), p.metadata)
                 for p, cs in zip(prompts, completions) for c in cs]
        results = list(zip([response for _, response, _ in items], self.rewards.score_items(items)))
        return [results[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]

    def _eval_episodes(self, params: SamplingParams) -> list[list[tuple[str, RewardResult]]]:
        """`params.n` agent episodes per held-out row, graded: per row, (episode text, result) of each;
        the episode text is its turns and observations as the policy saw them."""
        play, never = self._agent_player(params), threading.Event()
        # One per engine, shared by the episodes on it, so their turns are batched while it is busy.
        turns = [EngineTurns(self.rollout, i, self.cfg.rollout.generate_timeout_s, never)
                 for i in range(len(self.rollout.workers))]

        def episode(k: int) -> tuple[str, RewardResult]:
            prompt = self.eval_prompts[k // params.n]
            sample = play(prompt, turns[k % len(turns)], f"eval-{k}", f"eval-{k // params.n}")
            return (self.tokenizer.decode(sample.response_ids, skip_special_tokens=True),
                    RewardResult(sample.reward, sample.reward_details, sample.reward_error))

        with ThreadPoolExecutor(self.cfg.rollout.episodes_in_flight, thread_name_prefix="eval-episode") as pool:
            results = list(pool.map(episode, range(len(self.eval_prompts) * params.n)))
        return [results[i * params.n:(i + 1) * params.n] for i in range(len(self.eval_prompts))]

    def save(self) -> Path:
        """HF model + tokenizer, DeepSpeed state and the trainer state of the current step, with the
        data position: every prompt below `next_prompt` consumed, plus those above it."""
        t0 = time.perf_counter()
        self.state.next_prompt = self.source.buffer.watermark
        self.state.consumed_above = sorted(self.source.buffer.consumed_above)
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
        """Print where things are, the final evaluation and the summary line; the run's key figures."""
        summary = {
            "steps": self.state.step,
            "reward_first10": round(statistics.fmean(rewards_per_step[:10]), 4) if rewards_per_step else float("nan"),
            "reward_last10": round(statistics.fmean(rewards_per_step[-10:]), 4) if rewards_per_step else float("nan"),
            "samples_per_s": round(samples / seconds, 2) if seconds else 0.0,
        }
        self.tracker.close_bar()
        print(f"W&B run ({self.tracker.mode}): {self.tracker.location}")
        print(f"checkpoint: {checkpoint / 'hf'}")
        print(f"eval greedy reward: {final_eval['eval/greedy_reward']:.3f}")
        report = self.write_report()
        if report is not None:
            print(f"report: {report}")
        print(format_summary(summary), flush=True)
        return {**summary, **final_eval, "optimizer_steps": self.learner.optimizer_steps(),
                "checkpoint": str(checkpoint / "hf"), "wandb": self.tracker.location}

    def write_report(self) -> Path | None:
        """output_dir/report.html of the run so far (`cispo-train report`), or None with a warning: a
        report that fails never stops training."""
        self.source.timeline.write(self.out)
        try:
            from cispo.report import write_report

            return write_report([self.out], self.out / "report.html")
        except Exception as e:  # noqa: BLE001 - the report is a view of the run, not part of it
            self.tracker.alert("report not written", f"{type(e).__name__}: {e}")
            return None

    def shutdown(self) -> None:
        self.source.stop(self.out)
        self.tracker.finish()
        self.learner.shutdown()
        self.rollout.shutdown()
        self.rewards.shutdown()
        if self.sandboxes is not None:
            self.sandboxes.close()

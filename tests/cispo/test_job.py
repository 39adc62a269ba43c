"""Short end-to-end jobs on the real stack: Ray, a DeepSpeed learner, vLLM, reward workers, W&B offline."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cispo.checkpoint import latest_checkpoint
from cispo.config import ConfigError
from cispo.job import Job, _stop_once_started
from cispo.rollout.engines import EngineGroup, EngineSpec, RolloutError
from cispo.tracking import UnreadableRecord, keep_steps_through
from cispo.train import train
from cispo.trained_samples import TRAINED_SAMPLES_FILE
from cispo.types import SamplingParams


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_metrics(output_dir: str) -> list[dict]:
    return read_jsonl(Path(output_dir) / "metrics.jsonl")


@pytest.mark.slow
def test_short_job_leaves_wandb_files_and_a_loadable_checkpoint(ray_session, job_config, capsys):
    """Also with an LM head of its own (model.tie_embeddings=false): every push must carry it to vLLM."""
    # An impossible mismatch threshold: the alarm must fire (a correlation is at most 1).
    cfg = job_config(trainer__steps=3, trainer__save_every=2, algo__mismatch_alarm=1.5, model__tie_embeddings=False)
    result = train(cfg)
    printed = capsys.readouterr().out
    assert "WARNING: train/inference mismatch: sampler/learner token-probability correlation" in printed
    # The synchronous driver's learner steps with every core of this node (one rank on it).
    assert f"learner/threads={len(os.sched_getaffinity(0)):.4f}" in printed
    out = Path(cfg.trainer.output_dir)

    assert result["steps"] == 3
    steps = [m for m in read_metrics(cfg.trainer.output_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for key in ("reward/mean", "reward/pass_rate", "learner/loss", "learner/is_weight_mean", "learner/clip_frac_high",
                "learner/grad_norm", "learner/prob_corr", "perf/generate_s", "perf/push_s", "perf/samples_per_s"):
        assert key in steps[0], key
    # Synchronous: sampler and learner hold the same weights, the head included, after each push.
    assert all(m["learner/prob_corr"] > 0.999 for m in steps)

    run_files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert run_files and run_files[0].stat().st_size > 0

    ckpt, state = latest_checkpoint(out)
    assert state.step == 3 and state.version == 3
    assert (out / "checkpoints" / "step_000002" / "trainer_state.json").exists()
    hf_dir = ckpt / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert not model.config.tie_word_embeddings
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    prompt = tokenizer("3+4=").input_ids
    hf_greedy = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False,
                               eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    engine = EngineGroup(EngineSpec("vllm", str(hf_dir), 1.0, 0.0, {"max_model_len": 64}), 1, 300, 60)
    try:
        vllm_greedy = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=4))[0][0].token_ids
    finally:
        engine.shutdown()
    assert vllm_greedy == hf_greedy


@pytest.mark.slow
def test_resume_continues_step_optimizer_and_data_position(ray_session, job_config):
    """On a user's dataset (shuffled, epochs cycling): the resumed job trains exactly the prompts
    the uninterrupted stream would have."""
    examples = Path(__file__).parents[2] / "examples"
    cfg = job_config(trainer__steps=2, trainer__save_every=1, task__name="dataset",
                     task__path=str(examples / "arith.jsonl"), reward__fn=f"{examples / 'my_reward.py'}:reward")
    first = train(cfg)
    assert first["optimizer_steps"] == cfg.trainer.sft_steps + 2

    cfg.trainer.steps, cfg.trainer.resume = 4, True
    second = train(cfg)
    assert second["steps"] == 4
    assert second["optimizer_steps"] == cfg.trainer.sft_steps + 4  # the optimizer state came back too

    steps = [m for m in read_metrics(cfg.trainer.output_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    per_step = cfg.rollout.prompts_per_step
    assert [m["data/next_prompt"] for m in steps] == [(i + 1) * per_step for i in range(4)]
    trained = [sorted(r["prompt_indices"]) for r in read_jsonl(Path(cfg.trainer.output_dir) / TRAINED_SAMPLES_FILE)]
    assert trained == [list(range(i * per_step, (i + 1) * per_step)) for i in range(4)]  # none twice, none skipped


@pytest.mark.slow
def test_a_job_that_dies_in_rl_resumes_from_its_warm_up_checkpoint(ray_session, job_config, capsys):
    """trainer.save_warm_up: a checkpoint at step 0. A job whose later checkpoints are gone (it died in
    RL before the next save) resumes from it at step 1 and does not warm up again."""
    cfg = job_config(trainer__steps=1, trainer__sft_steps=3, trainer__save_warm_up=True)
    assert train(cfg)["optimizer_steps"] == 3 + 1
    checkpoints = Path(cfg.trainer.output_dir) / "checkpoints"
    assert json.loads((checkpoints / "step_000000" / "trainer_state.json").read_text())["step"] == 0
    warmed = AutoModelForCausalLM.from_pretrained(checkpoints / "step_000000" / "hf")
    initial = AutoModelForCausalLM.from_pretrained(Path(cfg.trainer.output_dir) / "init")
    assert not torch.equal(warmed.lm_head.weight, initial.lm_head.weight)  # it holds the warmed-up policy
    assert f"warm-up checkpoint: {checkpoints / 'step_000000' / 'hf'}" in capsys.readouterr().out
    shutil.rmtree(checkpoints / "step_000001")

    cfg.trainer.steps, cfg.trainer.resume = 2, True
    assert train(cfg)["optimizer_steps"] == 3 + 2  # the warm-up's 3 steps, once
    assert f"resuming from {checkpoints / 'step_000000'} (step 0)" in capsys.readouterr().out
    steps = [m["step"] for m in read_metrics(cfg.trainer.output_dir) if "reward/mean" in m]
    assert steps == [1, 2]  # the first run's step 1 went with its checkpoint


@pytest.mark.slow
def test_hybrid_model_job_trains_with_builtin_sampler(ray_session, job_config):
    """The lightning-attention MoE in the DeepSpeed learner (packed streams) and its own sampler, with an LM
    head of its own (model.tie_embeddings=false), which ZeRO-3 gathers for each push."""
    from transformers import MiniMaxForCausalLM

    cfg = job_config(model__arch="minimax", model__num_layers=4, model__softmax_every=4,
                     model__intermediate_size=256, rollout__engine="builtin", learner__zero_stage=3,
                     model__tie_embeddings=False)
    result = train(cfg)
    steps = [m for m in read_metrics(cfg.trainer.output_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    # Sampler and learner compute the same probabilities (decode path vs packed training path).
    assert all(m["learner/prob_corr"] > 0.999 for m in steps)
    reference = MiniMaxForCausalLM.from_pretrained(result["checkpoint"])
    assert reference.config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert not reference.config.tie_word_embeddings
    assert not torch.equal(reference.lm_head.weight, reference.model.embed_tokens.weight)


def _free_cpus_return_to(level: float, timeout_s: float = 60.0) -> bool:
    """Whether the Ray cluster's free CPUs come back to `level` (killed actors free theirs asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= level:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("colocate", [False, True], ids=["engine-actors", "colocated"])
def test_a_part_that_fails_to_start_stops_the_actors_started_before_it(ray_session, job_config, colocate):
    free = ray.available_resources()["CPU"]
    # The reward workers cannot load the function while the learner and the engines start beside them.
    cfg = job_config(reward__fn="cispo.reward.not_a_module:fn", rollout__colocate=colocate)
    with pytest.raises(RuntimeError, match=r"(?s)reward workers for cispo\.reward\.not_a_module:fn did not start: "
                                           r".*cannot import module"):
        Job(cfg)
    assert _free_cpus_return_to(free), f"actors left running: {ray.available_resources()} of {free} CPUs free"


def test_a_part_started_in_the_background_is_stopped_and_a_failure_the_job_does_not_raise_is_logged(caplog):
    class Part:
        stopped = False

        def shutdown(self):
            self.stopped = True

    started, part = Future(), Part()
    started.set_result(part)
    assert _stop_once_started(started, "the part")(None, None, None) is False  # never swallows the job's error
    assert part.stopped
    failed, error = Future(), RolloutError("an engine died while loading")
    failed.set_exception(error)
    with caplog.at_level(logging.ERROR, logger="cispo.job"):
        _stop_once_started(failed, "the rollout engines")(RolloutError, error, None)
        assert not caplog.records  # the job raises this very error: not said twice
        _stop_once_started(failed, "the rollout engines")(RuntimeError, RuntimeError("reward workers"), None)
    assert "the rollout engines did not start either" in caplog.text
    assert "an engine died while loading" in caplog.text


def test_the_warm_up_trains_an_episodes_own_turns_and_not_its_observations():
    """The warm-up's pairs and batch as `Job.warm_up` makes them, from a task whose reference answer is an
    episode's turns: the loss mask is 1 on the calls and the stop token, 0 on the observation."""
    from types import SimpleNamespace

    from cispo.envs.chat import PromptEncoder
    from cispo.envs.swe_task import SWETask
    from cispo.learner.batch import sft_batch

    tokenizer = SWETask.build_tokenizer()
    task = SimpleNamespace(reference_pair=lambda index: ("fix it", ["call", "observed", "submit"]))
    job = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(max_position_embeddings=64)), task=task,
                          encoder=PromptEncoder(tokenizer, chat_template="none"))
    prompt, answer, trained = next(Job._reference_pairs(job))
    n = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    assert trained == [1] * n("call") + [0] * n("observed") + [1] * (n("submit") + 1)
    batch = sft_batch([prompt], [answer], tokenizer.pad_token_id, [trained])
    assert batch.loss_mask[0, len(prompt) - 1:].tolist() == trained


def test_a_malformed_warm_up_answer_is_refused_naming_the_task_and_the_pair():
    from types import SimpleNamespace

    from cispo.envs.chat import PromptEncoder, PromptError
    from cispo.envs.swe_task import SWETask

    answers = ["fine", ["call", "observed", "submit"], ["call", "observed"]]  # the third has no last call
    task = SimpleNamespace(reference_pair=lambda index: ("fix it", answers[index]))
    job = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(max_position_embeddings=64),
                                              task=SimpleNamespace(name="my_tasks.py:TurnsTask")),
                          task=task, encoder=PromptEncoder(SWETask.build_tokenizer(), chat_template="none"))
    pairs = Job._reference_pairs(job)
    next(pairs), next(pairs)
    with pytest.raises(PromptError, match=r"task.name='my_tasks.py:TurnsTask', warm-up reference pair 2: "
                                          r"a warm-up answer is .* got \['call', 'observed'\]"):
        next(pairs)


def test_a_bpe_vocabulary_for_a_task_without_reference_answers_is_a_config_error_naming_the_setting():
    from types import SimpleNamespace

    from cispo.envs.swe_task import SWETask

    def no_answers(index):
        raise KeyError("answer")

    job = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(bpe_vocab=512)))
    task = SimpleNamespace(reference_pair=no_answers, build_tokenizer=SWETask.build_tokenizer)
    with pytest.raises(ConfigError, match="model.bpe_vocab=512 learns the tokenizer from the task's reference pairs, "
                                          "and pair 0 failed: KeyError: 'answer'"):
        Job._new_policy_tokenizer(job, task)


def test_engines_that_cannot_load_name_the_checkpoint(ray_session, tmp_path):
    missing = tmp_path / "no_such_policy"
    with pytest.raises(RolloutError, match=f"did not start: an engine died while loading {missing}"):
        EngineGroup(EngineSpec("builtin", str(missing), 1.0, 0.0, {}), num_workers=1, generate_timeout_s=60,
                     push_timeout_s=60, start_timeout_s=120)


@pytest.mark.slow
def test_failed_scorings_are_masked_counted_said_on_the_console_and_extra_fields_kept(ray_session, job_config,
                                                                                      capsys):
    user_rewards = Path(__file__).parents[1] / "reward" / "user_rewards.py"
    cfg = job_config(model__arch="minimax", model__num_layers=4, model__softmax_every=4, model__intermediate_size=256,
                     rollout__engine="builtin", reward__fn=f"{user_rewards}:sometimes_nan_reward",
                     reward__max_error_fraction=1.0)
    train(cfg)
    steps = [m for m in read_metrics(cfg.trainer.output_dir) if "reward/mean" in m]
    assert all(m["reward/errors"] > 0 for m in steps)
    console = capsys.readouterr()
    for m in steps:
        assert (f"WARNING: reward errors: step {m['step']}: {int(m['reward/errors'])} of "
                f"{cfg.rollout.prompts_per_step * cfg.algo.group_size} samples could not be scored") in console.err + console.out
    records = read_jsonl(Path(cfg.trainer.output_dir) / TRAINED_SAMPLES_FILE)
    details = [d for r in records for d in r["reward_details"]]
    assert any("len" in d for d in details)  # the reward's extra field, kept with its sample
    assert sum(e is not None for r in records for e in r["reward_errors"]) == sum(m["reward/errors"] for m in steps)
    assert console.out.strip().splitlines()[-1].startswith("summary: steps=2")  # the console's last line


def test_a_runs_records_keep_the_steps_up_to_the_resumed_checkpoint_and_a_fresh_job_empties_them(tmp_path):
    """metrics.jsonl, trained_samples.jsonl and eval_samples.jsonl in an output_dir used before."""
    record = tmp_path / "eval_samples.jsonl"
    record.write_text("".join(json.dumps({"step": s, "rows": []}) + "\n" for s in (0, 2, 3)))
    keep_steps_through(record, 2)  # resumed from step 2: step 3 is trained (and evaluated) again
    assert [json.loads(line)["step"] for line in record.read_text().splitlines()] == [0, 2]
    record.write_text(record.read_text() + json.dumps({"step": 3, "rows": []})[:9])  # a killed job's cut-short write
    keep_steps_through(record, 2)
    assert [json.loads(line)["step"] for line in record.read_text().splitlines()] == [0, 2]
    record.write_text(record.read_text() + "not json\n" + json.dumps({"step": 1}) + "\n")
    with pytest.raises(UnreadableRecord, match=r"eval_samples.jsonl:3: not a JSON object with a step") as unreadable:
        keep_steps_through(record, 2)
    assert unreadable.value.path == record  # what the console's resume hint says to move away
    keep_steps_through(record, None)  # a fresh job
    assert record.read_text() == ""
    keep_steps_through(tmp_path / "new.jsonl", 5)  # nothing there yet
    assert (tmp_path / "new.jsonl").read_text() == ""

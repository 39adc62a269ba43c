"""task=swe_synthetic end to end: rows, the byte-level tokenizer, gold answers graded in
Docker, and a short real RL job (Ray, DeepSpeed, vLLM, reward workers grading in sandboxes)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401  (registers `config_schema` in Hydra's ConfigStore)
from cispo.config import validate
from cispo.envs.docker_daemon import connect
from cispo.envs.pool import SandboxPool, set_shared_pool
from cispo.envs.sandbox import LABEL, sweep_leftovers
from cispo.envs.swe import extract_patch, patch_reward, render_patch_prompt
from cispo.envs.swe_task import SWETask
from cispo.envs.swe_instances import load_instances


@pytest.fixture(scope="module")
def swe_task(tmp_path_factory) -> SWETask:
    return SWETask.synthetic(tmp_path_factory.mktemp("swe_tasks"))


@pytest.fixture(scope="module")
def reward_pool():
    """The pool `patch_reward` grades with in this process, closed (containers removed) at the end."""
    with SandboxPool(max_concurrency=2) as pool:
        set_shared_pool(pool)
        yield pool


def test_rows_cycle_and_carry_what_the_reward_needs(swe_task, tmp_path):
    tasks = load_instances(swe_task.tasks_path)
    n = len(tasks)
    assert n == len(swe_task) == len(swe_task.eval_rows()) == 3
    for i, task in enumerate(tasks):
        row = swe_task.row(i)
        assert row == swe_task.row(i + n)  # the stream cycles through the set
        assert row.prompt == render_patch_prompt(task)
        assert task.patch not in row.prompt  # the gold fix is never shown
        assert row.metadata["instance_id"] == task.instance_id
        assert (Path(row.metadata["task_dir"]) / row.metadata["repo_path"]).resolve() == task.repo_path
    assert [r.metadata["instance_id"] for r in swe_task.eval_rows()] == [t.instance_id for t in tasks]
    # Generation is deterministic: a second job reuses the same set, byte for byte.
    assert SWETask.synthetic(swe_task.tasks_path.parent.parent).tasks_path == swe_task.tasks_path
    assert [p.name for p in swe_task.tasks_path.parent.parent.iterdir()] == [swe_task.tasks_path.parent.name]


def test_byte_tokenizer_round_trips_code_and_diffs(swe_task, tmp_path):
    from transformers import AutoTokenizer

    built = SWETask.build_tokenizer()
    built.save_pretrained(tmp_path)  # what the job does beside the random-init policy
    for tok in (built, AutoTokenizer.from_pretrained(tmp_path)):
        assert len(tok) == 259 and tok.pad_token_id == 0 and tok.bos_token_id == 1 and tok.eos_token_id == 2
        for i in range(len(swe_task)):
            prompt, answer = swe_task.reference_pair(i)
            for text in (prompt, answer, "\tx  =  ' é ⊕ ' \r\n\n  \\n"):
                ids = tok(text).input_ids
                assert ids[0] == tok.bos_token_id
                assert len(ids) == 1 + len(text.encode())  # one token per byte
                assert tok.decode(ids, skip_special_tokens=True) == text
                assert tok.decode(ids[1:]) == text


def test_reference_answers_are_resolved_and_junk_is_not(swe_task, reward_pool):
    for i in range(len(swe_task)):
        prompt, answer = swe_task.reference_pair(i)
        row = swe_task.row(i)
        assert prompt == row.prompt and extract_patch(answer) == row.metadata["patch"]
        result = patch_reward(prompt, answer, row.metadata)
        assert result["status"] == "resolved" and result["score"] == 1.0, result
    # What a random policy writes: no diff at all, and a diff cut off at max_new_tokens.
    junk = patch_reward(prompt, "x9 ``d(", row.metadata)
    cut = patch_reward(prompt, answer[:60], row.metadata)
    assert junk["score"] == cut["score"] == 0.0 and junk["status"] == cut["status"] == "unresolved"


def test_infra_error_is_masked_and_counted_as_a_status(swe_task, reward_pool):
    """A task the grader cannot run says nothing about the model: NaN, masked, and logged."""
    from cispo.algo.groups import assign_advantages
    from cispo.reward.worker import normalise_result
    from cispo.step import rollout_metrics
    from cispo.types import Group, Sample

    prompt, answer = swe_task.reference_pair(0)
    good = swe_task.row(0).metadata
    broken = {**good, "repo_path": "missing.bundle"}
    scored = [patch_reward(prompt, answer, good), patch_reward(prompt, "", good), patch_reward(prompt, answer, broken)]
    assert [r["status"] for r in scored] == ["resolved", "unresolved", "infra_error"] and math.isnan(scored[2]["score"])
    samples = []
    for k, value in enumerate(scored):  # as the reward workers and pool fill them in
        result = normalise_result(value, "patch_reward")
        samples.append(Sample(f"g-{k}", "g", [1], [3], [0.0], "stop", 0, reward=result.score,
                              reward_details=result.details, reward_error=result.error))
    assign_advantages([Group("g", samples)], "grpo")
    m = rollout_metrics(samples)
    assert not samples[2].trainable and samples[2].advantage == 0.0
    assert m["reward/errors"] == 1 and m["reward/mean"] == 0.5
    assert {k: round(v, 3) for k, v in m.items() if k.startswith("env/")} == {
        "env/status_resolved_frac": 0.333, "env/status_unresolved_frac": 0.333, "env/status_infra_error_frac": 0.333}


def job_containers(before: set[str]) -> list:
    """Sandbox containers started since `before` by a process under this one (a Ray worker of
    this test's Ray), alive or dead."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    new = [c for c in connect().containers.list(all=True, filters={"label": LABEL}) if c.id not in before]
    return [c for c in new if (pid := int(c.labels.get(f"{LABEL}.pid", "0"))) in ours or not psutil.pid_exists(pid)]


@pytest.mark.slow
def test_short_rl_job_grades_in_docker_and_logs_statuses(ray_session, tmp_path):
    out = tmp_path / "run"
    overrides = ["+experiment=swe_synthetic", f"trainer.output_dir={out}", f"task.data_dir={tmp_path / 'tasks'}",
                 "trainer.steps=2", "trainer.sft_steps=1", "trainer.sft_batch_size=3", "algo.group_size=2",
                 "rollout.max_new_tokens=48", "logger.progress_bar=false"]
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        cfg = validate(OmegaConf.to_object(compose(config_name="config", overrides=overrides)))
    from cispo.train import train

    # Orphans of earlier killed workers would make this job's two reward workers sweep them at
    # once on their first grading, and sweep_leftovers does not survive that race (docker 409
    # "removal already in progress" escapes patch_reward): clear them first.
    sweep_leftovers()
    before = {c.id for c in connect().containers.list(all=True, filters={"label": LABEL})}
    start = time.monotonic()
    result = train(cfg)
    seconds = time.monotonic() - start

    assert result["steps"] == 2 and result["eval/errors"] == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        fracs = {k: v for k, v in m.items() if k.startswith("env/status_")}
        assert fracs and math.isclose(sum(fracs.values()), 1.0), m
        assert set(fracs) <= {f"env/status_{s}_frac" for s in
                              ("resolved", "unresolved", "patch_failed", "timeout", "infra_error")}
        # 3 prompts x 2 samples, each graded in a sandbox; none failed to score.
        assert m["rollout/groups"] == 3 and m["reward/errors"] == 0 and m["perf/reward_s"] > 0
        assert m["data/prompts_trained"] == 3
    print(f"swe_synthetic job: 2 steps in {seconds:.0f} s; step metrics: "
          + ", ".join(f"{k}={v:.3g}" for k, v in steps[-1].items() if k.startswith(("env/", "perf/"))))

    # The reward workers are killed with the job (ray.kill: their pools' atexit close does not
    # run), so their warm sandboxes outlive them until a sweep removes containers of dead owners.
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(int(c.labels[f"{LABEL}.pid"])) for c in job_containers(before)) \
            and time.monotonic() < deadline:
        time.sleep(1)
    orphans = job_containers(before)
    removed = sweep_leftovers()
    print(f"sandboxes left by the killed reward workers: {len(orphans)}; removed by the sweep: {removed}")
    assert not job_containers(before)

"""Every shipped config composes against the schema and validates; the CLI's config contract."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401  (registers `config_schema` in Hydra's ConfigStore)
from cispo.config import Config, validate

CONF = Path(str(resources.files("cispo.conf")))  # conf/ wherever the package is installed
CISPO_TRAIN = Path(sys.executable).parent / "cispo-train"
# Groups chosen in config.yaml's defaults are swapped with `group=option`; the others
# (experiment/) are added with `+group=option`.
ADDED_GROUPS = {"experiment"}
# Options that are only valid together with another choice (the rule validate applies).
COMPANIONS = {("task", "swe"): ["task.path=tasks.jsonl"]}  # a user's own file: the option names none


def group_options() -> list[tuple[str, str]]:
    return [(d.name, f.stem) for d in sorted(CONF.iterdir()) if d.is_dir() and not d.name.startswith("_")
            for f in sorted(d.glob("*.yaml"))]


def load(overrides: list[str]) -> Config:
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        return validate(OmegaConf.to_object(compose(config_name="config", overrides=overrides)))


def test_every_group_directory_has_options():
    groups = {g for g, _ in group_options()}
    assert {"model", "rollout", "learner", "algo", "task", "reward", "logger", "trainer", "experiment"} <= groups


def test_default_config_composes_and_validates():
    cfg = load([])
    assert isinstance(cfg, Config)
    assert cfg.task.name == "addition" and cfg.reward.fn == "cispo.reward.builtin:addition_reward"
    assert cfg.model.arch == "minimax" and cfg.rollout.engine == "builtin"  # the hybrid model on its own sampler


@pytest.mark.parametrize("group,option", group_options())
def test_group_option_composes_and_validates(group, option):
    prefix = "+" if group in ADDED_GROUPS else ""
    cfg = load([f"{prefix}{group}={option}", *COMPANIONS.get((group, option), [])])
    assert isinstance(cfg, Config)


def test_swe_experiment_pairs_the_task_with_its_reward_and_enough_positions():
    cfg = load(["+experiment=swe_synthetic"])
    assert cfg.task.name == "swe_synthetic" and cfg.reward.fn == "cispo.envs.swe:patch_reward"
    # ~500 byte tokens of prompt plus the response must fit the policy and vLLM's max_model_len.
    assert cfg.model.max_position_embeddings >= 1024 + cfg.rollout.max_new_tokens


def test_the_env_section_sets_the_agent_episodes_limits():
    from cispo.job import agent_config

    cfg = load(["+experiment=swe_agent", "env.max_turns=5", "env.tool_timeout_s=7", "env.grade_unsubmitted=false"])
    agent = agent_config(cfg)
    assert (agent.max_turns, agent.command_timeout, agent.tool_docs, agent.grade_unsubmitted) == (5, 7.0, False, False)
    assert agent_config(load([])).grade_unsubmitted  # graded as left (autosubmit) unless told otherwise


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run([str(CISPO_TRAIN), *args], capture_output=True, text=True, timeout=120)
    return res, time.monotonic() - start


def test_cli_prints_the_resolved_config():
    res, _ = run_cli("--cfg", "job", "task=swe_synthetic", "trainer.steps=7")
    assert res.returncode == 0, res.stderr
    printed = yaml.safe_load(res.stdout)
    assert printed["task"]["name"] == "swe_synthetic" and printed["trainer"]["steps"] == 7
    assert set(printed) == {"model", "rollout", "learner", "algo", "task", "env", "reward", "logger", "trainer", "ray"}


def test_help_shows_each_key_under_its_comment_for_the_composed_config():
    res, _ = run_cli("--help", "reward=math")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    timeout = lines.index("  timeout_s: 60.0")  # conf/reward/math.yaml sets it
    assert lines[timeout - 2].startswith("  # Per-sample time limit")  # the comment above the field in config.py
    assert "  fn: cispo.reward.math:math_verify_reward" in lines  # the override's values, not the defaults
    assert "  rollout: builtin, vllm" in lines  # the groups and their options
    assert yaml.safe_load(res.stdout.split("section.key=value):\n", 1)[1])["reward"]["timeout_s"] == 60.0


@pytest.mark.parametrize("override,named", [
    ("algo.eps_high_is=abc", "algo.eps_high_is"),  # wrong type
    ("algo.nope=1", "algo.nope"),  # unknown key
    ("model.num_heads=8", "head_dim"),  # a rule across fields, checked by validate
    ("+trainer.stepz=5", "trainer.stepz: no such key"),  # Hydra's own hint, '+', must not lose the typo
    ("algo.loss=foo", "algo.loss: unknown policy loss 'foo'; known: cispo"),
    ("reward.fn=/nonexistent/r.py:fn", "reward.fn='/nonexistent/r.py:fn': no file"),
    ("reward.fn=cispo.reward.builtin:nofn", "has no 'nofn'"),
    ("model.path=/some/missing/dir", "model.path: /some/missing/dir does not exist"),
    ("task.name=nosuchtask", "task.name: 'nosuchtask' is unknown"),
    ("learner.world_size=4 ray.num_cpus=2", "reserve 5 CPUs (4 learner ranks"),  # hung for good before
    ("env.mode=agent task=swe_synthetic", "raise model.max_position_embeddings"),  # the default model is too short
    ("model.bpe_vocab=200", "model.bpe_vocab: must be 0 (the task's tokenizer) or more than the 259"),
])
def test_cli_rejects_a_bad_config_fast_naming_the_key(override, named):
    res, seconds = run_cli(*override.split())
    assert res.returncode != 0
    assert named in res.stderr, res.stderr
    assert seconds < 30, f"{seconds:.1f} s: a bad config must fail before anything starts"


def test_open_dicts_take_new_keys_with_plus():
    res, _ = run_cli("--cfg", "job", "+rollout.resources.rollout_node=1", "+task.args.level=3")
    assert res.returncode == 0, res.stderr
    printed = yaml.safe_load(res.stdout)
    assert printed["rollout"]["resources"] == {"rollout_node": 1.0} and printed["task"]["args"] == {"level": 3}


def test_resume_says_what_it_finds_before_anything_starts(tmp_path):
    """true with no checkpoint, or a checkpoint already at trainer.steps, is an error before Ray starts."""
    out = tmp_path / "run"
    res, seconds = run_cli("trainer.resume=true", f"trainer.output_dir={out}")
    assert res.returncode == 2 and "trainer.resume=true: no complete checkpoint" in res.stderr and seconds < 30
    checkpoint = out / "checkpoints" / "step_000075"  # the layout cispo.checkpoint writes; its state says step 75
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 75, "version": 75, "next_prompt": 1200}')
    res, seconds = run_cli("trainer.resume=true", "trainer.steps=50", f"trainer.output_dir={out}")
    assert res.returncode == 2 and "trainer.steps=50: the checkpoint to resume" in res.stderr
    assert "at step 75 already" in res.stderr and seconds < 30

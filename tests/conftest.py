"""Fixtures shared across the suite: one local Ray for the session, small job configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import cispo  # noqa: F401 - first: once tests/ is on sys.path, tests/cispo/ would pass for the package

# Test helpers that tests (and the scripts they start) import by name, e.g. `actor_processes`.
sys.path.append(str(Path(__file__).parent))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by every test that needs one (starting Ray costs ~10 s).

    Logical CPUs exceed the 2 physical cores so a learner, an engine and reward
    workers fit at once, as `cispo.job.connect_ray` does for a local job."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def job_config(tmp_path):
    """A small, fast version of the default job writing under tmp_path."""
    from cispo.config import Config

    def make(**overrides) -> Config:
        cfg = Config()
        cfg.trainer.output_dir = str(tmp_path / "run")
        cfg.trainer.steps = 2
        cfg.trainer.sft_steps = 2
        cfg.trainer.save_every = 0
        cfg.rollout.prompts_per_step = 4
        cfg.algo.group_size = 4
        cfg.task.eval_size = 8
        cfg.logger.progress_bar = False
        for dotted, value in overrides.items():
            group, key = dotted.split("__")
            setattr(getattr(cfg, group), key, value)
        return cfg

    return make

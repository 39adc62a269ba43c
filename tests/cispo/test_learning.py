"""The default job learns: `make train`'s config, run in full, must raise the reward by 0.3; so must the
colocated layout, on the hybrid model's built-in sampler and on the dense model's vLLM."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401  (registers the config schema)
from cispo.config import validate
from cispo.train import train


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[], ["rollout.colocate=true"],
                                       ["model=qwen2_tiny", "rollout=vllm", "rollout.colocate=true"]],
                         ids=["default", "colocated", "colocated-dense-vllm"])
def test_default_job_improves_reward_by_0_3(ray_session, tmp_path, overrides):
    with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
        cfg = validate(OmegaConf.to_object(compose("config", overrides=[
            f"trainer.output_dir={tmp_path / 'default'}", "logger.progress_bar=false", *overrides])))
    result = train(cfg)
    assert result["steps"] == cfg.trainer.steps
    assert result["reward_last10"] >= result["reward_first10"] + 0.3, result

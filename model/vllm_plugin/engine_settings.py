"""Engine settings the hybrid model needs: prefix caching off, so its states are plain per-sequence rows.

With prefix caching on, vLLM puts hybrid models in `mamba_cache_mode="align"`: states
are kept per block and copied across block boundaries so that a cached prefix can be
resumed. Our lightning layer keeps one state row per sequence ("none" mode). vLLM has
no model-class hook for this; its per-architecture config table (`MODELS_CONFIG_MAP`,
consulted before the hybrid defaults) is the supported place, so the plugin adds one
entry there. An RL rollout engine gains little from prefix caching anyway: weights
change every step (the dense worker resets the cache on each push).
"""

from __future__ import annotations

from vllm.logger import init_logger

logger = init_logger("vllm.plugins.cispo_lightning_moe")  # under "vllm." so vLLM's log handler prints it


def register_engine_settings(architecture: str) -> None:
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

    class LightningMoEConfig(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            if vllm_config.cache_config.enable_prefix_caching:
                logger.info("%s: prefix caching disabled (lightning states are per sequence)", architecture)
                vllm_config.cache_config.enable_prefix_caching = False

    MODELS_CONFIG_MAP[architecture] = LightningMoEConfig

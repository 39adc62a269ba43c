"""vLLM plugin: serves our hybrid lightning-attention MoE checkpoints (`MiniMaxForCausalLM`).

Installed as the `vllm.general_plugins` entry point `cispo_lightning_moe` (pyproject.toml),
so every vLLM process that starts, the engine's included, calls `register()`; then

    vllm.LLM(model=checkpoint_dir, dtype="float32")

serves a directory our code (or transformers) wrote. vLLM 0.32 lists the architecture as
removed; a registered model takes precedence over that list.
"""

ARCHITECTURE = "MiniMaxForCausalLM"  # the architectures[0] of our checkpoints' config.json


def register() -> None:
    """Registers the model class (lazily, by path) and its engine settings."""
    from vllm import ModelRegistry

    from cispo.model.vllm_plugin.engine_settings import register_engine_settings

    ModelRegistry.register_model(ARCHITECTURE, "cispo.model.vllm_plugin.model:LightningMoEForCausalLM")
    register_engine_settings(ARCHITECTURE)

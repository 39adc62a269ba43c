"""The job's policy: create one (random init + the task's tokenizer), or take any HF causal-LM
checkpoint; its architecture is read from the checkpoint's config.json, never from `model.arch`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config

from cispo.config import PolicyConfig


def create_policy(cfg: PolicyConfig, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Write a randomly initialised policy and its tokenizer as an HF checkpoint directory."""
    directory = Path(directory)
    torch.manual_seed(cfg.init_seed)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    if cfg.arch == "qwen2":
        hf_cfg = Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
            tie_word_embeddings=cfg.tie_embeddings, torch_dtype="float32", **special)
        model = AutoModelForCausalLM.from_config(hf_cfg, torch_dtype=torch.float32)
    else:
        from cispo.model import LightningMoELM
        from cispo.model import ModelConfig

        # One softmax-attention layer after every (softmax_every - 1) lightning layers (M1: every 8th).
        layer_types = ["full_attention" if (i + 1) % cfg.softmax_every == 0 else "linear_attention"
                       for i in range(cfg.num_layers)]
        model = LightningMoELM(ModelConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.hidden_size // cfg.num_heads,
            layer_types=layer_types, num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token,
            max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_embeddings,
            lm_head_fp32=cfg.lm_head_fp32, **special))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


HYBRID_MODEL_TYPE = "minimax"  # transformers' MiniMax checkpoints: our lightning-attention MoE runs them


class PolicyError(ValueError):
    """A policy checkpoint that cannot be used; the message names the directory and the key."""


def checkpoint_config(directory: str | Path) -> dict:
    """The config.json of an HF checkpoint directory, or an error naming what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError(f"model.path: {directory} does not exist (an HF checkpoint directory is expected)")
    path = directory / "config.json"
    if not path.is_file():
        raise PolicyError(f"model.path: {directory} has no config.json: not an HF checkpoint directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PolicyError(f"model.path: {path} is not valid JSON: {e}") from e


def is_hybrid(directory: str | Path) -> bool:
    """Whether the checkpoint is our hybrid lightning-attention MoE (transformers' MiniMax format)."""
    return checkpoint_config(directory).get("model_type") == HYBRID_MODEL_TYPE


def load_policy(directory: str | Path) -> torch.nn.Module:
    """The trainable module for an HF checkpoint directory: ours for the hybrid model, else transformers'."""
    if is_hybrid(directory):
        from cispo.model import from_pretrained

        return from_pretrained(str(directory))
    return AutoModelForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32)


def check_servable(directory: str | Path, engine: str) -> None:
    """Refuse, before any actor starts, a checkpoint the rollout engine cannot serve."""
    config = checkpoint_config(directory)
    archs = config.get("architectures") or []
    if config.get("model_type") == HYBRID_MODEL_TYPE:
        return  # the built-in sampler runs it, and vLLM through our plugin (cispo.model.vllm_plugin)
    if engine == "builtin":
        from cispo.model.dense import DenseConfig, UnsupportedCheckpoint

        try:
            DenseConfig.from_hf(config)
        except UnsupportedCheckpoint as e:
            raise PolicyError(f"model.path: {directory} is {archs or config.get('model_type')}: {e}") from e
        except KeyError as e:
            raise PolicyError(f"model.path: {directory}/config.json has no {e.args[0]!r}, which the built-in "
                              "sampler needs") from e
        return
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if not archs or not any(a in supported for a in archs):
        raise PolicyError(f"model.path: {directory} declares architectures {archs} in config.json; vLLM serves "
                          f"none of them, so rollout=vllm cannot sample from it")


def save_hf_checkpoint(module: torch.nn.Module, weights: dict[str, torch.Tensor], directory: str | Path) -> None:
    """Write `weights` (full, gathered) in the HF format of `module`'s architecture."""
    if isinstance(module, PreTrainedModel):
        module.save_pretrained(str(directory), state_dict=weights)
        return
    from cispo.model import LightningMoELM

    copy = LightningMoELM(module.config)  # ours saves its own parameters: load the gathered ones first
    copy.load_state_dict(weights)
    copy.save_pretrained(str(directory))

"""Create the job's initial policy (random init + the task's tokenizer) and load policies by arch."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config

from cispo.config import ModelConfig


def create_policy(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
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
            tie_word_embeddings=True, torch_dtype="float32", **special)
        model = AutoModelForCausalLM.from_config(hf_cfg, torch_dtype=torch.float32)
    else:
        from cispo.model import LightningMoELM
        from cispo.model import ModelConfig as HybridConfig

        # One softmax-attention layer after every (softmax_every - 1) lightning layers (M1: every 8th).
        layer_types = ["full_attention" if (i + 1) % cfg.softmax_every == 0 else "linear_attention"
                       for i in range(cfg.num_layers)]
        model = LightningMoELM(HybridConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.hidden_size // cfg.num_heads,
            layer_types=layer_types, num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token,
            max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
            lm_head_fp32=cfg.fp32_lm_head, **special))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_policy(directory: str | Path, cfg: ModelConfig) -> torch.nn.Module:
    """The trainable module for an HF checkpoint directory: transformers' class, or ours for minimax."""
    if cfg.arch == "minimax":
        from cispo.model import from_pretrained

        return from_pretrained(str(directory))
    return AutoModelForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32)


def save_hf_checkpoint(module: torch.nn.Module, weights: dict[str, torch.Tensor], directory: str | Path) -> None:
    """Write `weights` (full, gathered) in the HF format of `module`'s architecture."""
    if isinstance(module, PreTrainedModel):
        module.save_pretrained(str(directory), state_dict=weights)
        return
    from cispo.model import LightningMoELM

    copy = LightningMoELM(module.config)  # ours saves its own parameters: load the gathered ones first
    copy.load_state_dict(weights)
    copy.save_pretrained(str(directory))

"""Create the job's initial policy (random init + the task's tokenizer) and load policies by arch."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase, Qwen2Config

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
        from cispo.model import create_model

        model = create_model(cfg, vocab_size=len(tokenizer), **special)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_policy(directory: str | Path, cfg: ModelConfig) -> torch.nn.Module:
    """The trainable module for an HF checkpoint directory: transformers' class, or ours for minimax."""
    if cfg.arch == "minimax":
        from cispo.model import from_pretrained

        return from_pretrained(str(directory))
    return AutoModelForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32)

"""Our weight names (checkpoint or learner push) -> the plugin's vLLM parameters, one tensor at a time.

| ours                                                   | vLLM parameter                                |
|--------------------------------------------------------|-----------------------------------------------|
| `...block_sparse_moe.*` (checkpoint) / `...mlp.*`      | `...mlp.*`                                    |
| `...experts.{e}.w1 / w3 / w2.weight` (checkpoint)      | fused MoE `{e}.gate_proj / up_proj / down_proj` |
| `...experts.gate_up_proj / down_proj` (stacked, push)  | fused MoE `gate_up_proj / down_proj`          |
| softmax `self_attn.q_proj / k_proj / v_proj.weight`    | `self_attn.qkv_proj.weight`, shard q / k / v  |
| `model.embed_tokens.weight`, tied embeddings           | also `lm_head.weight` (vLLM keeps its own head) |
| lightning decay buffers (`slope_rate`, ...)            | none: recomputed from the config              |

Streaming (no tensor is held back), so a large checkpoint loads in vLLM's memory budget.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from cispo.model.config import ModelConfig

_DECAY_BUFFERS = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")
_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(w[123])\.weight$")
_EXPERT_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_QKV = re.compile(r"^(.*\.self_attn)\.([qkv])_proj\.weight$")


class Target(NamedTuple):
    param: str  # parameter name in the vLLM model, or the fused-MoE module for expert weights
    tensor: torch.Tensor
    shard: str | None = None  # q / k / v of a stacked qkv_proj
    expert_weight: str | None = None  # the name the fused-MoE module's own loader takes


def to_vllm_names(weights: Iterable[tuple[str, torch.Tensor]], config: ModelConfig) -> Iterator[Target]:
    for name, tensor in weights:
        if name.rsplit(".", 1)[-1] in _DECAY_BUFFERS:
            continue
        name = name.replace(".block_sparse_moe.", ".mlp.")
        if m := _EXPERT.match(name):
            yield Target(m.group(1), tensor, expert_weight=f"{m.group(2)}.{_EXPERT_NAMES[m.group(3)]}.weight")
        elif name.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")):
            module, _, leaf = name.rpartition(".")
            yield Target(module, tensor, expert_weight=leaf)
        elif m := _QKV.match(name):
            yield Target(f"{m.group(1)}.qkv_proj.weight", tensor, shard=m.group(2))
        else:
            yield Target(name, tensor)
            if config.tie_word_embeddings and name == "model.embed_tokens.weight":
                yield Target("lm_head.weight", tensor)

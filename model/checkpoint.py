"""Checkpoint directories in transformers' MiniMax format, both ways.

On disk, `MiniMaxForCausalLM.save_pretrained` writes the legacy per-expert layout
(`block_sparse_moe.experts.{e}.w1/w2/w3.weight`, gate = w1, up = w3, down = w2)
and the lightning layers' decay buffers; in memory it (and we) hold stacked experts
(`mlp.experts.gate_up_proj` = [w1; w3] per expert, `mlp.experts.down_proj` = w2).
`from_pretrained` stacks, `save_pretrained` unstacks; everything else is a key copy.
The decay buffers are functions of the config: we recompute them rather than load
them, and write them so transformers finds every key it expects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cispo.model.config import ModelConfig
from cispo.model.modeling import LightningMoELM

_EXPERT = re.compile(r"^(model\.layers\.\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w[123])\.weight$")
_DECAY_BUFFERS = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(path / name)))
    return tensors


def hf_to_ours(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Checkpoint keys (legacy or stacked expert layout) -> our state_dict keys."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, list[torch.Tensor | None]]] = {}
    for key, value in tensors.items():
        if key.rsplit(".", 1)[-1] in _DECAY_BUFFERS:
            continue
        m = _EXPERT.match(key)
        if m:
            layer, e, w = m.group(1), int(m.group(2)), m.group(3)
            slots = experts.setdefault(layer, {n: [None] * config.num_local_experts for n in ("w1", "w2", "w3")})
            slots[w][e] = value
            continue
        out[key.replace(".block_sparse_moe.", ".mlp.")] = value
    for layer, w in experts.items():
        missing = [f"{n}[{e}]" for n, lst in w.items() for e, t in enumerate(lst) if t is None]
        if missing:
            raise KeyError(f"{layer}: expert tensors missing from the checkpoint: {missing}")
        out[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat([a, b]) for a, b in zip(w["w1"], w["w3"])])
        out[f"{layer}.mlp.experts.down_proj"] = torch.stack(w["w2"])
    if config.tie_word_embeddings:
        out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])
    return out


def ours_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state_dict -> the on-disk layout transformers writes (and reads)."""
    out: dict[str, torch.Tensor] = {}
    I = config.intermediate_size
    for key, value in state.items():
        value = value.detach().contiguous()
        if key.endswith(".mlp.experts.gate_up_proj"):
            prefix = key[: -len(".mlp.experts.gate_up_proj")]
            for e in range(value.shape[0]):
                out[f"{prefix}.block_sparse_moe.experts.{e}.w1.weight"] = value[e, :I].clone()
                out[f"{prefix}.block_sparse_moe.experts.{e}.w3.weight"] = value[e, I:].clone()
        elif key.endswith(".mlp.experts.down_proj"):
            prefix = key[: -len(".mlp.experts.down_proj")]
            for e in range(value.shape[0]):
                out[f"{prefix}.block_sparse_moe.experts.{e}.w2.weight"] = value[e].clone()
        else:
            out[key.replace(".mlp.", ".block_sparse_moe.")] = value
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    for i, kind in enumerate(config.layer_types):
        if kind == "linear_attention":
            out.update(_decay_buffers(config, i))
    return out


def _decay_buffers(config: ModelConfig, layer_idx: int) -> dict[str, torch.Tensor]:
    """The four lightning buffers transformers keeps in its checkpoints, by its formulas."""
    H, B = config.num_attention_heads, config.block_size
    base = 1 / (2 ** (8 / H))
    factor = 1 - layer_idx / (config.num_hidden_layers - 1 + 1e-5) + 1e-5
    slope = (base ** (torch.arange(H) + 1) * factor)[:, None, None]  # (H, 1, 1)
    r = torch.arange(B) + 1
    diag = slope * (r[:, None] - r[None, :])[None, None]  # (1, H, B, B)
    prefix = f"model.layers.{layer_idx}.self_attn."
    return {
        prefix + "slope_rate": slope,
        prefix + "query_decay": torch.exp(-slope * r[:, None]),  # (H, B, 1)
        prefix + "key_decay": torch.exp(-slope * (B - r[:, None])),  # (H, B, 1)
        prefix + "diagonal_decay": torch.exp(torch.where(diag >= 0, -diag, float("-inf"))),
    }


def load_weights(model: LightningMoELM, tensors: dict[str, torch.Tensor]) -> None:
    """Copy converted checkpoint tensors into the model, refusing any missing or stray key."""
    state = hf_to_ours(tensors, model.config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.load_state_dict(state, strict=True)


def from_pretrained(path: str | Path, dtype: torch.dtype = torch.float32) -> LightningMoELM:
    """Load a directory written by `transformers.MiniMaxForCausalLM.save_pretrained` (or by us)."""
    path = Path(path)
    config = ModelConfig.from_json(path / "config.json")
    model = LightningMoELM(config)
    load_weights(model, read_tensors(path))
    return model.to(dtype)


def save_pretrained(model: LightningMoELM, path: str | Path) -> None:
    """Write config.json + model.safetensors that `transformers.MiniMaxForCausalLM.from_pretrained` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.to_json(path / "config.json", dtype=str(model.lm_head.weight.dtype).removeprefix("torch."))
    save_file(ours_to_hf(model.state_dict(), model.config), str(path / "model.safetensors"), metadata={"format": "pt"})

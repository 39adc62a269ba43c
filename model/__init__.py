"""cispo.model: the hybrid lightning-attention MoE policy (MiniMax-Text-01 / M1 layout) and its sampler.

Imports nothing of ours but `cispo.types`. Checkpoints are transformers' MiniMax format.

    model = from_pretrained(path)                     # a LightningMoELM (torch.nn.Module)
    out = model(input_ids)                            # (B, T) -> out.logits (B, T, V)
    out = model(flat_ids, cu_seqlens=cu)              # packed documents, (1, total) + int32 (D+1,)
    loss = nll + model.config.router_aux_loss_coef * out.aux_loss
    out.router_metrics()                              # imbalance_max / imbalance_mean / dead_experts
    out = model(flat_ids, cu_seqlens=cu, routing=SamplerRouting(...))  # routing replay (cispo.model.moe)
    model.save_pretrained(path)                       # transformers.MiniMaxForCausalLM loads it
    sampler = Sampler(model, max_batch=32)            # a RolloutEngine: generate / update_weights / policy_version
    sampler = Sampler(DenseLM.from_pretrained(path))  # a dense Qwen2 / Llama checkpoint (cispo.model.dense)
"""

from cispo.model.checkpoint import from_pretrained, save_pretrained
from cispo.model.config import ModelConfig
from cispo.model.modeling import LightningMoELM, LMOutput
from cispo.model.sampler import Sampler

__all__ = ["LMOutput", "LightningMoELM", "ModelConfig", "Sampler", "from_pretrained", "save_pretrained"]

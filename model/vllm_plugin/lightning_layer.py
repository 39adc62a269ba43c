"""The lightning-attention token mixer as a vLLM layer whose recurrent state lives in vLLM's v1 state cache.

It is a `LinearAttention` (vLLM's `MambaBase` family), so the engine allocates one
FP32 (H, d, d) state per sequence for it beside the softmax layers' paged KV cache
and hands it the `LinearAttentionMetadata` of each step (decodes first, then prefills,
each with its cache row). The math is our model's (`cispo.model.attention.LightningAttention`):
q, k, v = SiLU(x W_qkv) per head; decayed linear attention; RMSNorm (eps 1e-6);
sigmoid output gate; out_proj. Slopes are transformers' formula, not vLLM's MiniMax
one (they differ in the depth factor), so logits match the learner's.

The forward goes through vLLM's `linear_attention` custom op (registered by its
MiniMax layer module), which torch.compile leaves opaque and which calls `_forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Imported for its side effect: it registers torch.ops.vllm.linear_attention, which calls our _forward.
import vllm.model_executor.layers.mamba.linear.minimax_linear_attn  # noqa: F401
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.mamba.linear.base import LinearAttention
from vllm.distributed import tensor_model_parallel_all_reduce
from vllm.v1.attention.backends.linear_attn import LinearAttentionMetadata

from cispo.model.config import ModelConfig
from cispo.model.lightning import decay_slopes
from cispo.model.vllm_plugin import lightning_kernels


class OutputNorm(nn.Module):
    """RMSNorm over all H*d output channels (eps 1e-6, transformers' lightning norm, not rms_norm_eps).

    Under tensor parallelism a rank holds some heads, so the mean square is all-reduced.
    (vLLM's MiniMaxText01RMSNormTP does the same, but its partial() weight loader breaks
    vLLM's in-place weight reload, which the weight push uses.)
    """

    def __init__(self, size: int, eps: float, tp_size: int, tp_rank: int):
        super().__init__()
        self.eps, self.tp_size, self.tp_rank = eps, tp_size, tp_rank
        self.weight = nn.Parameter(torch.ones(size // tp_size))
        self.weight.weight_loader = self.load_shard

    def load_shard(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        n = param.shape[0]
        param.data.copy_(loaded[self.tp_rank * n: (self.tp_rank + 1) * n])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = x.float().pow(2).mean(dim=-1, keepdim=True)  # (T, 1)
        if self.tp_size > 1:
            mean_square = tensor_model_parallel_all_reduce(mean_square) / self.tp_size
        return self.weight * (x.float() * torch.rsqrt(mean_square + self.eps)).to(x.dtype)


class LightningAttentionLayer(LinearAttention):
    def __init__(self, hf_config, model_config: ModelConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__(hf_config, vllm_config, prefix)
        self.tp_heads = self.num_heads // self.tp_size
        inner = self.num_heads * self.head_dim
        # Rows of qkv_proj are [q | k | v] per head, so a contiguous TP shard is whole heads.
        self.qkv_proj = ColumnParallelLinear(self.hidden_size, 3 * inner, bias=False, prefix=f"{prefix}.qkv_proj")
        self.output_gate = ColumnParallelLinear(self.hidden_size, inner, bias=False, prefix=f"{prefix}.output_gate")
        self.out_proj = RowParallelLinear(inner, self.hidden_size, bias=False, prefix=f"{prefix}.out_proj")
        self.norm = OutputNorm(inner, eps=1e-6, tp_size=self.tp_size, tp_rank=self.tp_rank)
        heads = slice(self.tp_rank * self.tp_heads, (self.tp_rank + 1) * self.tp_heads)
        slope = decay_slopes(self.num_heads, self.layer_idx, model_config.num_hidden_layers)[heads]
        self.register_buffer("slope", slope.contiguous(), persistent=False)  # (H_tp,) from the config
        self.triton = lightning_kernels.use_triton(self.head_dim)
        forward_context = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in forward_context:
            raise ValueError(f"Duplicate layer name: {prefix}")
        forward_context[prefix] = self  # how the engine finds the layer to give it a state cache

    def get_state_dtype(self) -> tuple[torch.dtype]:
        """FP32 whatever the model dtype: the state is a long sum of decayed outer products."""
        return (torch.float32,)

    def forward(self, hidden_states: torch.Tensor, output: torch.Tensor, positions: torch.Tensor) -> None:
        torch.ops.vllm.linear_attention(hidden_states, output, positions, self.prefix)

    def _forward(self, hidden_states: torch.Tensor, output: torch.Tensor, positions: torch.Tensor) -> None:
        metadata = get_forward_context().attn_metadata
        meta: LinearAttentionMetadata | None = metadata.get(self.prefix) if metadata is not None else None
        if meta is None:  # a profiling / warm-up run: shapes only
            output.zero_()
            return
        n = meta.num_decode_tokens + meta.num_prefill_tokens
        x = hidden_states[:n]
        qkv, _ = self.qkv_proj(x)
        qkv = F.silu(qkv).float().view(n, self.tp_heads, 3 * self.head_dim)  # (T, H, 3d): [q | k | v] per head
        q, k, v = qkv.split(self.head_dim, dim=-1)  # (T, H, d) each
        states = self.kv_cache[0]  # (slots, H, d, d) FP32
        rows = meta.state_indices_tensor.long()  # (N,) decodes first, then prefills
        parts = []
        nd = meta.num_decodes
        if nd:
            parts.append(lightning_kernels.decode(q[:nd], k[:nd], v[:nd], self.slope, states, rows[:nd], self.triton))
        if meta.num_prefills:
            start = meta.num_decode_tokens
            loc = meta.query_start_loc[nd: nd + meta.num_prefills + 1].long()  # (P+1,)
            prefill_rows = rows[nd: nd + meta.num_prefills]
            # A sequence with no earlier tokens starts from a zero state (its slot may hold a finished one's).
            new_tokens = loc.diff()
            fresh = meta.seq_lens[nd: nd + meta.num_prefills].to(new_tokens.device) == new_tokens
            states[prefill_rows[fresh]] = 0.0
            parts.append(lightning_kernels.prefill(q[start:n], k[start:n], v[start:n], self.slope, loc - loc[0],
                                                   states, prefill_rows, self.triton))
        attn = torch.cat(parts).reshape(n, -1)  # (T, H*d)
        gate, _ = self.output_gate(x)
        hidden = torch.sigmoid(gate) * self.norm(attn.to(x.dtype))
        output[:n], _ = self.out_proj(hidden)

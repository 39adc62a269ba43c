"""Lightning attention (MiniMax-Text-01): linear attention with a per-head exponential decay.

    o_i = sum_{j <= i, doc(j) = doc(i)}  exp(-s_h (i - j)) (q_i . k_j) v_j

computed in blocks of B tokens with no Python loop over blocks:

* intra-block: (Q K^T ⊙ D) V for every block at once, D_ij = exp(-s (i - j)) for i >= j;
* inter-block: the state entering block n is S_n = sum_{m < n, same doc} g^(n-1-m) KV_m,
  with KV_m = (K_m ⊙ key decay)^T V_m and g = exp(-s B). That scan is one batched
  matmul with the lower-triangular (blocks x blocks) matrix of powers of g, whose
  cost (blocks^2 d^2) is negligible next to the intra part (blocks B^2 d) at any
  practical length, so time and memory stay linear in the number of tokens;
* output: intra + (Q ⊙ query decay) S_n.

Everything runs in FP32 whatever the model dtype: the state is a long sum of decayed
outer products and bf16 would lose its tail. Decoding keeps one FP32 (d, d) state per
head and updates it token by token (`decode_step`).
"""

from __future__ import annotations

import torch

from cispo.model.packing import PackedLayout


def decay_slopes(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """(H,) decay rate per head: ALiBi slopes scaled down with depth (transformers' formula, verbatim).

    The last layer decays almost not at all (factor ~1e-5): it sees the whole context.
    """
    base = 1 / (2 ** (8 / num_heads))
    rate = base ** (torch.arange(num_heads) + 1)
    factor = 1 - layer_idx / (num_layers - 1 + 1e-5) + 1e-5
    return (rate * factor).float()


def lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    layout: PackedLayout,
    return_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decayed linear attention over packed documents.

    q, k, v: (T, H, d) tokens of all documents back to back; slope: (H,).
    Returns the output (T, H, d) in q's dtype and, if asked, each document's final
    state (D, H, d, d) in FP32, ready for `decode_step` to continue from.
    """
    dtype = q.dtype
    B = layout.block_size
    qb = layout.to_blocks(q.float()).permute(2, 0, 1, 3)  # (H, NB, B, d)
    kb = layout.to_blocks(k.float()).permute(2, 0, 1, 3)  # (H, NB, B, d)
    vb = layout.to_blocks(v.float()).permute(2, 0, 1, 3)  # (H, NB, B, d)
    s = slope.float().to(q.device)[:, None]  # (H, 1)
    s3 = s[:, :, None]  # (H, 1, 1)

    pos = torch.arange(B, device=q.device, dtype=torch.float32)
    diff = pos[:, None] - pos[None, :]  # (B, B) i - j
    diag_decay = torch.where(diff >= 0, torch.exp(-s3 * diff.clamp(min=0)), 0.0)  # (H, B, B)
    query_decay = torch.exp(-s * (pos + 1))[:, None, :, None]  # (H, 1, B, 1) distance to the previous block's end
    key_decay = torch.exp(-s * (B - 1 - pos))[:, None, :, None]  # (H, 1, B, 1) distance to this block's end

    # Intra-block, all blocks at once.
    scores = torch.matmul(qb, kb.transpose(-1, -2)) * diag_decay[:, None]  # (H, NB, B, B)
    out = torch.matmul(scores, vb)  # (H, NB, B, d)

    # Inter-block: per-block KV contributions, then the decayed prefix sum over blocks of the same document.
    kv = torch.matmul((kb * key_decay).transpose(-1, -2), vb)  # (H, NB, d, d)
    blk = torch.arange(layout.num_blocks, device=q.device, dtype=torch.float32)
    lag = blk[:, None] - 1 - blk[None, :]  # (NB, NB) n - 1 - m
    carries = (lag >= 0) & (layout.block_doc[:, None] == layout.block_doc[None, :])  # (NB, NB)
    scan = torch.where(carries, torch.exp(-s3 * B * lag.clamp(min=0)), 0.0)  # (H, NB, NB)
    H, NB, d = kv.shape[0], kv.shape[1], kv.shape[-1]
    states = torch.matmul(scan, kv.reshape(H, NB, d * d)).view(H, NB, d, d)  # state entering each block
    out = out + torch.matmul(qb * query_decay, states)  # (H, NB, B, d)

    result = layout.from_blocks(out.permute(1, 2, 0, 3)).to(dtype)  # (T, H, d)
    if not return_state:
        return result, None

    # Final state of each document: its last block's entering state decayed over the r real
    # tokens of that block, plus those tokens' own outer products decayed to the last one.
    last, r = layout.last_block, layout.last_len.to(torch.float32)  # (D,), (D,)
    lag_tok = (r[:, None] - 1 - pos[None, :])  # (D, B) distance of token j to the last real token
    tok_decay = torch.where(lag_tok >= 0, torch.exp(-s3 * lag_tok.clamp(min=0)), 0.0)  # (H, D, B)
    final = torch.exp(-s * r)[..., None, None] * states[:, last]  # (H, D, d, d)
    final = final + torch.matmul((kb[:, last] * tok_decay[..., None]).transpose(-1, -2), vb[:, last])
    return result, final.permute(1, 0, 2, 3)  # (D, H, d, d)


def decode_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, slope: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per sequence: S <- exp(-s) S + k^T v, o = q S.

    q, k, v: (N, H, d); state: (N, H, d, d) FP32. Returns o (N, H, d) in q's dtype and the new state.
    """
    decay = torch.exp(-slope.float().to(q.device))[None, :, None, None]  # (1, H, 1, 1)
    state = decay * state + k.float()[..., :, None] * v.float()[..., None, :]  # (N, H, d, d)
    out = torch.matmul(q.float()[..., None, :], state).squeeze(-2)  # (N, H, d)
    return out.to(q.dtype), state

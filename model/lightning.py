"""Lightning attention (MiniMax-Text-01): linear attention with a per-head exponential decay.

    o_i = sum_{j <= i, doc(j) = doc(i)}  exp(-s_h (i - j)) (q_i . k_j) v_j

computed in blocks of B tokens with no Python loop over blocks:

* intra-block: (Q K^T ⊙ D) V for every block at once, D_ij = exp(-s (i - j)) for i >= j;
* inter-block: the state entering block n is S_n = sum_{m < n, same doc} g^(n-1-m) KV_m,
  with KV_m = (K_m ⊙ key decay)^T V_m and g = exp(-s B): a log-depth scan over the
  blocks (`_entering_states`), O(blocks log(blocks) d^2) elementwise work, so time
  and memory stay linear in the number of tokens (up to that log);
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
    qkv = layout.to_blocks(torch.stack((q, k, v), dim=1).float())  # (NB, B, 3, H, d)
    qb, kb, vb = qkv.permute(2, 3, 0, 1, 4).contiguous()  # (H, NB, B, d) each, one copy for all three
    s = slope.float().to(q.device)[:, None]  # (H, 1)
    s3 = s[:, :, None]  # (H, 1, 1)

    pos = torch.arange(B, device=q.device, dtype=torch.float32)
    diff = pos[:, None] - pos[None, :]  # (B, B) i - j
    diag_decay = torch.where(diff >= 0, torch.exp(-s3 * diff.clamp(min=0)), 0.0)  # (H, B, B)

    # Intra-block, all blocks at once.
    scores = torch.matmul(qb, kb.transpose(-1, -2)) * diag_decay[:, None]  # (H, NB, B, B)
    out = torch.matmul(scores, vb)  # (H, NB, B, d)

    # Inter-block: per-block KV contributions, then the decayed prefix sum over blocks of the same document.
    # When every document fits in one block (an RL batch of short responses) no state crosses a block.
    carries = layout.num_blocks > layout.num_docs
    if carries:
        query_decay = torch.exp(-s * (pos + 1))[:, None, :, None]  # (H, 1, B, 1) distance to the previous block's end
        key_decay = torch.exp(-s * (B - 1 - pos))[:, None, :, None]  # (H, 1, B, 1) distance to this block's end
        kv = torch.matmul((kb * key_decay).transpose(-1, -2), vb)  # (H, NB, d, d)
        states = _entering_states(kv, layout.block_doc, torch.exp(-s[:, 0] * B))  # (H, NB, d, d)
        out = out + torch.matmul(qb * query_decay, states)  # (H, NB, B, d)

    result = layout.from_blocks(out.permute(1, 2, 0, 3)).to(dtype)  # (T, H, d)
    if not return_state:
        return result, None

    # Final state of each document: the outer products of its last block's r real tokens decayed
    # to the last one, plus (if the document spans blocks) that block's entering state decayed over r.
    last, r = layout.last_block, layout.last_len.to(torch.float32)  # (D,), (D,)
    lag_tok = (r[:, None] - 1 - pos[None, :])  # (D, B) distance of token j to the last real token
    tok_decay = torch.where(lag_tok >= 0, torch.exp(-s3 * lag_tok.clamp(min=0)), 0.0)  # (H, D, B)
    final = torch.matmul((kb[:, last] * tok_decay[..., None]).transpose(-1, -2), vb[:, last])  # (H, D, d, d)
    if carries:
        final = final + torch.exp(-s * r)[..., None, None] * states[:, last]
    return result, final.permute(1, 0, 2, 3)  # (D, H, d, d)


def _entering_states(kv: torch.Tensor, block_doc: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """S_n = sum_{m < n, doc(m) = doc(n)} g^(n-1-m) KV_m for every block n, in log2(blocks) steps.

    A Hillis-Steele scan of the inclusive sums P_n = sum_{m <= n} g^(n-m) KV_m: step j adds
    g^(2^j) P_(n-2^j) to P_n when block n-2^j is in the same document (documents are
    contiguous runs of blocks, so then every block between is too). S_n = P_(n-1) within a
    document, 0 at its first block. kv: (H, NB, d, d); g: (H,) decay over one block.
    """
    NB = kv.shape[1]
    prefix, offset, decay = kv, 1, g[:, None, None, None]  # decay = g^offset, (H, 1, 1, 1)
    while offset < NB:
        same_doc = (block_doc[offset:] == block_doc[:-offset]).to(kv.dtype)[None, :, None, None]  # (1, NB-o, 1, 1)
        carried = prefix[:, :-offset] * (decay * same_doc)  # (H, NB-o, d, d)
        prefix = torch.cat((prefix[:, :offset], prefix[:, offset:] + carried), dim=1)
        decay, offset = decay * decay, offset * 2
    starts_doc = torch.ones_like(block_doc, dtype=torch.bool)
    starts_doc[1:] = block_doc[1:] != block_doc[:-1]  # (NB,) first block of a document
    entering = torch.cat((torch.zeros_like(kv[:, :1]), prefix[:, :-1]), dim=1)  # (H, NB, d, d) P_(n-1)
    return entering.masked_fill(starts_doc[None, :, None, None], 0.0)


def decode_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, slope: torch.Tensor
) -> torch.Tensor:
    """One token per sequence: S <- exp(-s) S + k^T v, o = q S, updating `state` in place.

    q, k, v: (N, H, d); state: (N, H, d, d) FP32 and contiguous (the cache rows of the
    N sequences, or a copy of them). Returns o (N, H, d) in q's dtype. In place and as
    three batched kernels because this runs once per layer per generated token.
    """
    N, H, d = q.shape
    state.mul_(torch.exp(-slope.float())[:, None, None])  # (H, 1, 1) decay per head
    flat = state.view(N * H, d, d)
    flat.baddbmm_(k.float().reshape(N * H, d, 1), v.float().reshape(N * H, 1, d))
    return torch.bmm(q.float().reshape(N * H, 1, d), flat).view(N, H, d).to(q.dtype)

"""Where each token of a packed stream sits in the batched layouts the layers compute in.

The learner feeds documents packed into one flat stream with `cu_seqlens`; a plain
(batch, seq) input is the special case of equal lengths. Two layers need the tokens
regrouped:

* lightning attention works on blocks of B tokens. Each document is padded up to a
  multiple of B so that no block straddles two documents; a block then belongs to one
  document and "reset the state at a boundary" becomes "do not carry state between
  blocks of different documents" (waste: under B tokens per document; B shrinks to
  fit when every document is shorter).
* softmax attention works on a (documents, longest) padded batch. Padding sits at the
  end of a document, so under the causal mask it never reaches a real token.

The index tensors are built once per forward and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedLayout:
    cu_seqlens: torch.Tensor  # (D+1,) int64 document offsets in the flat stream
    lengths: torch.Tensor  # (D,) tokens per document
    positions: torch.Tensor  # (T,) position of each token within its document
    block_size: int  # the lightning chunk length asked for, or less when every document is shorter
    num_blocks: int  # total blocks over all documents (each padded to a multiple of B)
    block_slot: torch.Tensor | None  # (T,) flat index into (num_blocks * B); None when the layout is a reshape
    block_doc: torch.Tensor  # (num_blocks,) document of each block
    last_block: torch.Tensor  # (D,) index of each document's last block
    last_len: torch.Tensor  # (D,) real tokens in that last block (1..B)
    max_len: int  # longest document
    pad_slot: torch.Tensor | None  # (T,) flat index into (D * max_len); None when the layout is a reshape

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, block_size: int) -> "PackedLayout":
        cu = cu_seqlens.to(torch.int64)
        if cu.ndim != 1 or cu.numel() < 2 or cu[0] != 0:
            raise ValueError(f"cu_seqlens must be 1-D, start at 0 and hold at least one document; got {cu.tolist()}")
        lengths = cu.diff()
        if (lengths <= 0).any():
            raise ValueError(f"cu_seqlens must be strictly increasing (no empty documents); got {cu.tolist()}")
        device = cu.device
        total = int(cu[-1])
        num_docs = lengths.numel()
        doc_of_token = torch.repeat_interleave(torch.arange(num_docs, device=device), lengths)  # (T,)
        positions = torch.arange(total, device=device) - cu[:-1][doc_of_token]  # (T,)

        max_len = int(lengths.max())
        # Blocks only split the sum, so any length gives the same result: when every document is
        # shorter than `block_size`, the smallest power of two holding the longest pads far less
        # (an RL batch of 20-token responses would otherwise be mostly padding).
        block_size = min(block_size, 1 << (max_len - 1).bit_length())
        blocks_per_doc = (lengths + block_size - 1) // block_size  # (D,)
        block_start = torch.cumsum(blocks_per_doc, 0) - blocks_per_doc  # (D,) first block of each document
        num_blocks = int(blocks_per_doc.sum())
        uniform = bool((lengths == lengths[0]).all())

        block_slot = block_start[doc_of_token] * block_size + positions  # (T,)
        pad_slot = doc_of_token * max_len + positions  # (T,)
        return cls(
            cu_seqlens=cu,
            lengths=lengths,
            positions=positions,
            block_size=block_size,
            num_blocks=num_blocks,
            block_slot=None if uniform and max_len % block_size == 0 else block_slot,
            block_doc=torch.repeat_interleave(torch.arange(num_docs, device=device), blocks_per_doc),
            last_block=block_start + blocks_per_doc - 1,
            last_len=(lengths - 1) % block_size + 1,
            max_len=max_len,
            pad_slot=None if uniform else pad_slot,
        )

    @classmethod
    def uniform(cls, batch: int, seq_len: int, block_size: int, device: torch.device) -> "PackedLayout":
        """The layout of a plain (batch, seq_len) input: `batch` documents of equal length."""
        cu = torch.arange(0, (batch + 1) * seq_len, seq_len, device=device)
        return cls.from_cu_seqlens(cu, block_size)

    @property
    def num_docs(self) -> int:
        return self.lengths.numel()

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (num_blocks, B, ...), zeros in the padding."""
        if self.block_slot is None:
            return x.reshape(self.num_blocks, self.block_size, *x.shape[1:])
        out = x.new_zeros(self.num_blocks * self.block_size, *x.shape[1:])
        out = out.index_copy(0, self.block_slot, x)
        return out.view(self.num_blocks, self.block_size, *x.shape[1:])  # (NB, B, ...)

    def from_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(num_blocks, B, ...) -> (T, ...)."""
        flat = x.reshape(self.num_blocks * self.block_size, *x.shape[2:])
        return flat if self.block_slot is None else flat.index_select(0, self.block_slot)

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (D, max_len, ...), zeros in the padding."""
        if self.pad_slot is None:
            return x.reshape(self.num_docs, self.max_len, *x.shape[1:])
        out = x.new_zeros(self.num_docs * self.max_len, *x.shape[1:])
        out = out.index_copy(0, self.pad_slot, x)
        return out.view(self.num_docs, self.max_len, *x.shape[1:])  # (D, L, ...)

    def from_padded(self, x: torch.Tensor) -> torch.Tensor:
        """(D, max_len, ...) -> (T, ...)."""
        flat = x.reshape(self.num_docs * self.max_len, *x.shape[2:])
        return flat if self.pad_slot is None else flat.index_select(0, self.pad_slot)

    def last_token_index(self) -> torch.Tensor:
        """(D,) flat index of each document's last token (where the next-token logits are)."""
        return self.cu_seqlens[1:] - 1

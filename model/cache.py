"""What one forward knows about its tokens, and the decoding state carried between forwards.

A forward is one of three kinds:

* full (training, parity): packed documents, no cache;
* prefill: packed prompts, each written into a cache slot (lightning final state, K/V);
* decode: one new token for each of some slots, continuing from the cache.

`DecodeCache` holds, per slot, one FP32 (H, d, d) state per lightning layer and the
K/V of every softmax layer, preallocated to `max_len` so a slot can be refilled by
the next prompt without reallocating (continuous batching).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import NamedTuple

import torch

from cispo.model.config import ModelConfig
from cispo.model.moe import SamplerRouting
from cispo.model.packing import PackedLayout


class DecodeCache:
    def __init__(self, config: ModelConfig, num_slots: int, max_len: int, dtype: torch.dtype, device: torch.device):
        H, KVH, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.max_len = max_len
        self.lengths = torch.zeros(num_slots, dtype=torch.int64, device=device)  # tokens seen per slot
        self.state: dict[int, torch.Tensor] = {}  # lightning layer -> (slots, H, d, d) FP32
        self.keys: dict[int, torch.Tensor] = {}  # softmax layer -> (slots, KVH, max_len, d)
        self.values: dict[int, torch.Tensor] = {}
        for i, kind in enumerate(config.layer_types):
            if kind == "linear_attention":
                self.state[i] = torch.zeros(num_slots, H, d, d, dtype=torch.float32, device=device)
            else:
                self.keys[i] = torch.zeros(num_slots, KVH, max_len, d, dtype=dtype, device=device)
                self.values[i] = torch.zeros(num_slots, KVH, max_len, d, dtype=dtype, device=device)

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Give slots `dst` (N,) the decoding state of slots `src` (N,): n samples of one prompt
        share its prefill."""
        for table in (self.state, self.keys, self.values):
            for rows in table.values():
                rows[dst] = rows[src]
        self.lengths[dst] = self.lengths[src]


class SlotDecoding:
    """The sampler's calls on a model (`cispo.model.Sampler`): a cache, packed prompts into their slots,
    one token for each of some slots. The model gives `config`, `lm_head` and `_decoder(tokens, ctx)`:
    final hidden states (T, hidden) and the experts each token was routed to (T, layers, k), or None
    for a dense model."""

    @abstractmethod
    def _decoder(self, tokens: torch.Tensor, ctx: "ForwardContext") -> tuple[torch.Tensor, torch.Tensor | None]:
        ...

    def new_cache(self, num_slots: int, max_len: int) -> DecodeCache:
        p = self.lm_head.weight
        return DecodeCache(self.config, num_slots, max_len, dtype=p.dtype, device=p.device)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor, cache: DecodeCache,
                slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run packed prompts (T,) and store each one's state in its cache slot (D,).

        Returns the next-token logits (D, vocab) at each prompt's last token and the experts
        every token was routed to (T, layers, k; None for a dense model).
        """
        layout = PackedLayout.from_cu_seqlens(cu_seqlens, self.config.lightning_chunk_size)
        if layout.max_len > cache.max_len:
            raise ValueError(f"prompt of {layout.max_len} tokens does not fit the cache ({cache.max_len})")
        ctx = ForwardContext(positions=layout.positions, layout=layout, cache=cache, slots=as_rows(slots))
        hidden, experts = self._decoder(tokens, ctx)
        cache.lengths[slots] = layout.lengths
        return self.lm_head(hidden[layout.last_token_index()]), experts

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, cache: DecodeCache,
               slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One new token (N,) for each of `slots` (N,): advance their states; return logits (N, vocab) and
        the experts each token was routed to (N, layers, k; None for a dense model)."""
        positions = cache.lengths[slots]
        if int(positions.max()) >= cache.max_len:
            raise ValueError(f"a slot is full: the cache holds {cache.max_len} tokens")
        hidden, experts = self._decoder(tokens, ForwardContext(positions=positions, cache=cache, slots=as_rows(slots)))
        cache.lengths[slots] = positions + 1
        return self.lm_head(hidden), experts


def as_rows(slots: torch.Tensor) -> torch.Tensor | slice:
    """Consecutive slot numbers as a slice, so cache reads and writes are views."""
    first, n = int(slots[0]), slots.numel()
    if torch.equal(slots.cpu(), torch.arange(first, first + n)):
        return slice(first, first + n)
    return slots


class ForwardContext(NamedTuple):
    """A NamedTuple, not a dataclass: ZeRO-3's hooks look for tensors only inside tuples, lists and dicts."""

    positions: torch.Tensor  # (T,) position of each token within its document (RoPE)
    layout: PackedLayout | None = None  # document structure; None when decoding
    cache: DecodeCache | None = None  # set for prefill and decode
    # Cache rows of each document / decoded token: a slice when they are consecutive (a view, no
    # gather/scatter copies; the common case with all slots busy), else an index tensor.
    slots: torch.Tensor | slice | None = None
    routing: SamplerRouting | None = None  # full forwards: the experts a sampler routed these tokens to

    @property
    def decoding(self) -> bool:
        return self.layout is None

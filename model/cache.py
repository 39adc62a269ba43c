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

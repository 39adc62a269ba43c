"""Turn scored samples into the tensors a learner rank trains on.

Samples are right-padded into [B, L] token rows; every per-token tensor is aligned
with the *targets* (position t holds the token at t+1 and the log-prob the model
gives it from position t), so shapes are [B, L-1]. The sampler's MoE routing is the
exception: it belongs to the *inputs* (the experts token t went through), so [B, L].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from cispo.types import Sample


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # (B, L) prompt + response, right-padded with pad_id
    attention_mask: torch.Tensor  # (B, L) 1 on real tokens
    old_logp: torch.Tensor  # (B, L-1) the loss's pi_old log-prob of each target token; 0 off-response
    loss_mask: torch.Tensor  # (B, L-1) 1 on trained response targets
    advantages: torch.Tensor  # (B,) one advantage per sample
    # (B, L-1) the sampler's log-probs: equal to old_logp unless the learner recomputed that
    # (`with_old_logp`); the train/inference mismatch metrics always compare these with the learner's.
    sampler_logp: torch.Tensor
    # (B, L-1) each token's weight on the loss: a rollout correction's (`with_correction`), else 1.
    token_weights: torch.Tensor
    # MoE routing the sampler recorded (None when no sample carries any): (B, L, layers, k) uint8 expert
    # ids of each input token, and (B, L) bool, which tokens have them (`Sample.routed_experts`).
    routed_experts: torch.Tensor | None = None
    routing_recorded: torch.Tensor | None = None
    # algo.routing_replay: the learner's forward sends recorded tokens to these experts, not its own top-k.
    replay_routing: bool = False

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def chunks(self, n: int) -> list["TrainBatch"]:
        """`n` row chunks of sizes differing by at most one (some empty when n > len)."""
        fields = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return [TrainBatch(*parts) for parts in
                zip(*(torch.tensor_split(v, n) if isinstance(v, torch.Tensor) else [v] * n for v in fields))]

    def rows(self, index: torch.Tensor) -> "TrainBatch":
        """The rows `index` (a mini-batch), in that order."""
        fields = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return TrainBatch(*(v[index] if isinstance(v, torch.Tensor) else v for v in fields))

    def trimmed(self) -> "TrainBatch":
        """These rows without the padding columns that all of them have (a micro-batch of short rows)."""
        width = self.input_ids.shape[1]
        length = int(self.attention_mask.sum(-1).max())
        if length == width:
            return self
        # Per-input fields are (B, L, ...), per-target ones (B, L-1): each loses the same padding columns.
        return dataclasses.replace(self, **{
            f.name: v[:, :length - (width - v.shape[1])] for f in dataclasses.fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor) and v.ndim >= 2})

    def with_old_logp(self, old_logp: torch.Tensor) -> "TrainBatch":
        """This batch with the loss's pi_old replaced by `old_logp` (B, L-1) on trained tokens (0 elsewhere)."""
        return dataclasses.replace(self, old_logp=torch.where(self.loss_mask > 0, old_logp, torch.zeros_like(old_logp)))

    def with_correction(self, weights: torch.Tensor, keep: torch.Tensor) -> "TrainBatch":
        """This batch with a rollout correction applied: `weights` (B, L-1) on each token's loss, and the
        tokens where `keep` (B, L-1) is 0 taken out of the loss mask, so the loss's normaliser skips them too."""
        return dataclasses.replace(self, loss_mask=self.loss_mask * keep, token_weights=weights)


def make_batch(samples: list[Sample], pad_id: int, replay_routing: bool = False) -> TrainBatch:
    """Pack samples into padded tensors. A sample that failed to score keeps a zero loss mask.
    `replay_routing`: the learner computes with the sampler's recorded experts (algo.routing_replay)."""
    length = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    b = len(samples)
    # Filled in numpy (a row is one slice assignment from a list), then handed to torch without a copy:
    # a step's per-sample tensors cost more than the rest of the batch's making.
    input_ids = np.full((b, length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((b, length), dtype=np.int64)
    old_logp = np.zeros((b, length - 1), dtype=np.float32)
    loss_mask = np.zeros((b, length - 1), dtype=np.float32)
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[i, :p] = s.prompt_ids
        input_ids[i, p:p + r] = s.response_ids
        attention_mask[i, :p + r] = 1
        # Response token j sits at position p+j and is predicted from position p+j-1.
        old_logp[i, p - 1:p - 1 + r] = s.behaviour_logprobs
        if s.trainable:
            loss_mask[i, p - 1:p - 1 + r] = s.loss_mask
    old_logp_t = torch.from_numpy(old_logp)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return TrainBatch(torch.from_numpy(input_ids), torch.from_numpy(attention_mask), old_logp_t,
                      torch.from_numpy(loss_mask), advantages, sampler_logp=old_logp_t.clone(),
                      token_weights=torch.ones_like(old_logp_t), **_routing(samples, length),
                      replay_routing=replay_routing)


def _routing(samples: list[Sample], length: int) -> dict[str, torch.Tensor]:
    """The samples' recorded experts as `routed_experts` (B, L, layers, k) and `routing_recorded` (B, L);
    nothing when none has a record. A sample without one routes all its tokens itself."""
    first = next((s.routed_experts for s in samples if s.routed_experts is not None), None)
    if first is None:
        return {}
    experts = torch.zeros((len(samples), length, first.layers, first.top_k), dtype=torch.uint8)
    recorded = torch.zeros((len(samples), length), dtype=torch.bool)
    for i, s in enumerate(samples):
        r = s.routed_experts
        if r is not None:
            ids = torch.frombuffer(bytearray(r.ids), dtype=torch.uint8)  # a writable buffer: bytes would warn
            experts[i, :r.tokens] = ids.view(r.tokens, r.layers, r.top_k)
            recorded[i, :r.tokens] = True
    return {"routed_experts": experts, "routing_recorded": recorded}


def sft_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
              trained: list[list[int]] | None = None) -> TrainBatch:
    """A supervised batch: the reference responses, advantage 1, behaviour log-prob 0; `trained`: each
    response's loss mask (1 trained, 0 context such as an agent's observations), all 1 if not given."""
    masks = trained or [[1] * len(r) for r in responses]
    samples = [
        Sample(sample_id=str(i), group_id=str(i), prompt_ids=p, response_ids=r, behaviour_logprobs=[0.0] * len(r),
               finish_reason="stop", policy_version=0, loss_mask=m, reward=1.0, advantage=1.0)
        for i, (p, r, m) in enumerate(zip(prompts, responses, masks))
    ]
    return make_batch(samples, pad_id)

"""The built-in batched sampler: the hybrid model's own (vLLM 0.32 no longer has this
architecture), and a lighter engine than vLLM's for small dense models (`dense.py`).

Continuous batching over a fixed number of cache slots: every prompt (repeated n
times) waits in a queue; free slots take the next prompts in one packed prefill, all
running slots advance one token per batched decode step, and a slot whose sequence
finishes is handed to the next waiting prompt at once. Samples of one prompt admitted
together share its prefill: the prompt runs once and its state is copied to their
slots (prefill-once). Each slot's state is one FP32 (H, d, d) matrix per lightning
layer plus the K/V of the softmax layers, so memory per slot grows only with the
softmax layers' context.

A sequence finishes with:
* "stop": it sampled one of `stop_token_ids` (the stop token is kept, with its log-prob,
  as the last token: the learner must learn to emit it);
* "repetition": the last `repetition_window` tokens were each sampled with probability
  > `repetition_prob` (MiniMax-M1's early stop; same rule as rollout/repetition.py);
* "length": `max_tokens` reached, or the cache is full.

Log-probs: see `sampling.py` (log-softmax of logits / temperature, untruncated).

Routing: every completion carries the experts each MoE layer sent each token to
(`Completion.routed_experts`, one byte per id), for the prompt (prefill) and every response
token but the last (which is never fed back): exactly the tokens a learner forward routes
and whose outputs reach a trained log-prob, so routing replay (R3) covers all of them.
Samples of one prompt share its prefill routing. Dense models and models with over 256
experts record nothing.
Satisfies `cispo.rollout.engine.RolloutEngine`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from cispo.model.cache import DecodeCache
from cispo.model.dense import DenseLM
from cispo.model.modeling import LightningMoELM
from cispo.model.sampling import choose_tokens
from cispo.types import Completion, FinishReason, RoutedExperts, SamplingParams


@dataclass
class _Running:
    request: int  # index into the flat (prompt, sample) list
    prompt_len: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    confident_run: int = 0  # consecutive tokens sampled with p > repetition_prob
    routing: list[np.ndarray] = field(default_factory=list)  # (tokens, layers, k) uint8 blocks, in order


class Sampler:
    def __init__(self, model: LightningMoELM | DenseLM, max_batch: int = 32, seed: int = 0):
        """`max_batch`: cache slots, i.e. sequences decoded together."""
        self.model = model.eval()
        self.max_batch = max_batch
        self.seed = seed
        self._calls = 0
        self._version = 0
        experts = model.config.num_local_experts  # 0: a dense model, nothing routed
        self.records_routing = 0 < experts <= 256  # ids are stored one byte each

    # --- the RolloutEngine Protocol -------------------------------------------------------

    def policy_version(self) -> int:
        return self._version

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Copy new weights in place (our / transformers' names, stacked or per-expert) and set the version."""
        incoming = self.model.state_from_hf(dict(named_tensors))
        params = dict(self.model.named_parameters(remove_duplicate=False))  # tied head: both names
        unknown = sorted(set(incoming) - set(params))
        if unknown:
            raise KeyError(f"update_weights: no parameter named {unknown[:8]}")
        for name, value in incoming.items():
            if value.shape != params[name].shape:
                raise ValueError(f"update_weights: {name} has shape {tuple(value.shape)}, expected {tuple(params[name].shape)}")
            params[name].copy_(value)
        self._version = version

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions per prompt, in prompt order."""
        max_ctx = self.model.config.max_position_embeddings
        for i, p in enumerate(prompts):
            if not p or len(p) >= max_ctx:
                raise ValueError(f"prompt {i}: {len(p)} tokens; need 1 to {max_ctx - 1} (max_position_embeddings)")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {params.max_tokens}")
        requests = [i for i in range(len(prompts)) for _ in range(params.n)]
        if not requests:
            return [[] for _ in prompts]
        cache_len = min(max_ctx, max(len(p) for p in prompts) + params.max_tokens)
        cache = self.model.new_cache(min(self.max_batch, len(requests)), cache_len)
        device = cache.lengths.device
        generator = torch.Generator(device).manual_seed(params.seed if params.seed is not None
                                                        else self.seed + self._calls)
        self._calls += 1

        pending = deque(range(len(requests)))
        free = list(range(cache.lengths.numel()))
        running: dict[int, _Running] = {}
        done: dict[int, Completion] = {}

        def advance(slots: list[int], logits: torch.Tensor) -> None:
            tokens, logprobs = choose_tokens(logits, params.temperature, params.top_k, params.top_p, generator)
            for slot, tok, lp in zip(slots, tokens.tolist(), logprobs.tolist()):
                seq = running[slot]
                seq.tokens.append(tok)
                seq.logprobs.append(lp)
                seq.confident_run = seq.confident_run + 1 if math.exp(lp) > params.repetition_prob else 0
                reason = self._finish_reason(seq, params, cache_len)
                if reason is not None:
                    done[seq.request] = Completion(seq.tokens, seq.logprobs, reason, self._version, self._routed(seq))
                    del running[slot]
                    free.append(slot)

        while pending or running:
            if pending and free:
                admitted = [(free.pop(0), pending.popleft()) for _ in range(min(len(free), len(pending)))]
                for slot, r in admitted:
                    running[slot] = _Running(request=r, prompt_len=len(prompts[requests[r]]))
                slots = [s for s, _ in admitted]
                logits, routing = self._prefill_once(prompts, [requests[r] for _, r in admitted], slots, cache)
                for slot, experts in zip(slots, routing):
                    running[slot].routing.append(experts)
                advance(slots, logits)
                continue  # slots freed by one-token completions are refilled before decoding
            slots = sorted(running)
            last = torch.tensor([running[s].tokens[-1] for s in slots], device=device)
            logits, experts = self.model.decode(last, cache, torch.tensor(slots, device=device))
            if self.records_routing:
                experts = self._as_bytes(experts)  # (N, layers, k)
                for i, slot in enumerate(slots):
                    running[slot].routing.append(experts[i:i + 1])
            advance(slots, logits)

        out: list[list[Completion]] = [[] for _ in prompts]
        for r, prompt_idx in enumerate(requests):
            out[prompt_idx].append(done[r])
        return out

    def _as_bytes(self, experts: torch.Tensor | None) -> np.ndarray:
        """(T, layers, k) expert ids as uint8 on the host (an empty array when not recording)."""
        if not self.records_routing:
            return np.empty((0,), np.uint8)
        return experts.to(torch.uint8).cpu().numpy()

    def _routed(self, seq: _Running) -> RoutedExperts | None:
        if not self.records_routing:
            return None
        ids = np.concatenate(seq.routing)  # (prompt + response - 1, layers, k)
        return RoutedExperts(ids.tobytes(), layers=ids.shape[1], top_k=ids.shape[2])

    def _prefill_once(
        self, prompts: list[list[int]], prompt_of: list[int], slots: list[int], cache: DecodeCache
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Prefill each distinct prompt among `prompt_of` once, into the first slot that takes it, and
        copy that state to its other slots. Returns next-token logits (len(slots), vocab) in slot order
        and, per slot, its prompt's routing (prompt tokens, layers, k) uint8."""
        device = cache.lengths.device
        distinct = list(dict.fromkeys(prompt_of))  # first-seen order
        head = {p: slots[prompt_of.index(p)] for p in distinct}  # the slot each prompt is prefilled into
        ids = [prompts[p] for p in distinct]
        cu = torch.tensor([0] + [len(p) for p in ids], device=device).cumsum(0)
        flat = torch.tensor([t for p in ids for t in p], device=device)
        logits, experts = self.model.prefill(flat, cu, cache, torch.tensor([head[p] for p in distinct], device=device))
        experts, bounds = self._as_bytes(experts), cu.tolist()
        copies = [(head[p], slot) for p, slot in zip(prompt_of, slots) if head[p] != slot]
        if copies:
            cache.copy_slots(*torch.tensor(copies, device=device).T)
        row = {p: i for i, p in enumerate(distinct)}
        routing = [experts[bounds[row[p]]:bounds[row[p] + 1]] for p in prompt_of]
        return logits[torch.tensor([row[p] for p in prompt_of], device=device)], routing

    @staticmethod
    def _finish_reason(seq: _Running, params: SamplingParams, cache_len: int) -> FinishReason | None:
        if seq.tokens[-1] in params.stop_token_ids:
            return "stop"
        if params.repetition_window and seq.confident_run >= params.repetition_window:
            return "repetition"
        if len(seq.tokens) >= params.max_tokens or seq.prompt_len + len(seq.tokens) >= cache_len:
            return "length"
        return None

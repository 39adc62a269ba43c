"""Choosing the next token from logits: temperature, top-k, top-p, and the log-prob we report.

The log-prob of a sampled token is taken from log_softmax(logits / temperature) over
the whole vocabulary, before top-k / top-p truncation. That is exactly what the
learner computes (log-softmax of its FP32 logits divided by the same temperature), so
the CISPO ratio r = exp(logp_new - logp_old) starts at 1 for an on-policy sample.
(vLLM by default reports log-probs of the raw, untempered model distribution; we do
not.) Truncation only decides which tokens can be drawn. With temperature 0 (greedy)
the log-prob is that of the untempered distribution, log_softmax(logits).
"""

from __future__ import annotations

import torch


def truncate(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (N, V) tempered logits to the top-k, then to the smallest top-p nucleus (vLLM's order)."""
    if 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (N, V)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p  # the first token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def choose_tokens(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) logits -> sampled tokens (N,) and their log-probs (N,) under the tempered, untruncated policy."""
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, logits.log_softmax(dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits / temperature
    logp = scaled.log_softmax(dim=-1)  # (N, V)
    kept = truncate(scaled, top_k, top_p)
    probs = logp.exp() if kept is scaled else kept.softmax(dim=-1)  # nothing truncated: reuse the log-softmax
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (N,)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)

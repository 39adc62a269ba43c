"""MiniMax-M1's repetition early stop, as one pure rule the samplers apply."""

from __future__ import annotations

from typing import Sequence


def repetition_stop_index(probs: Sequence[float], *, window: int, threshold: float = 0.99) -> int | None:
    """M1's repetition early stop: where to cut a response, or None to keep it whole.

    Scans per-token sampling probabilities p_t (exp of the engine's log-probs) for the
    first run of `window` consecutive tokens each with p_t > threshold; returns `end`
    such that the response kept is tokens[:end], i.e. the index just after the run's
    last token. M1 found such runs only in degenerate loops (N = 3000 at their scale);
    stopping them saves generation time and keeps their long tails out of training.
    window = 0 disables the rule (SamplingParams.repetition_window's convention).
    """
    if window < 0:
        raise ValueError(f"repetition window must be >= 0, got {window}")
    if window == 0:
        return None
    run = 0
    for t, p in enumerate(probs):
        run = run + 1 if p > threshold else 0
        if run == window:
            return t + 1
    return None

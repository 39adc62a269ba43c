"""Which rows of a rank's shard go into each micro-batch.

A dense transformers model computes every row of a micro-batch to the micro-batch's longest
row. When response lengths are far apart (some samples stop after a few tokens, others run to
the cap) most of a single micro-batch can be padding. Cut by length, rows of similar length share
a micro-batch, each trimmed to its own longest row (`TrainBatch.trimmed`): verl's dynamic batch
size does the same job. Splitting has a cost of its own (one more forward, backward and DeepSpeed
micro-step), so a cut is made only where it saves a good share of the computed tokens.

The micro-batch count must be equal on every rank (each backward takes part in the ranks'
gradient reduction), so it is chosen for all shards at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# A further cut must save at least this share of the tokens the micro-batches compute.
MIN_SAVING = 0.1


def plan_micro_batches(shard_lengths: list[torch.Tensor], count: int, max_rows: int,
                       by_length: bool) -> list[list[torch.Tensor]]:
    """Per shard, its micro-batches as row indices: the same number for every shard, at least `count`.

    `shard_lengths`: each shard's rows' real lengths (prompt + response tokens). Not `by_length`:
    `count` consecutive runs of rows (a packed model computes no padding). `by_length`: rows sorted
    longest first and cut where that saves the most padding, each part at most `max_rows` rows,
    with more parts than `count` only while each further one saves MIN_SAVING of the computed tokens."""
    if not by_length:
        return [list(torch.arange(len(lengths)).tensor_split(count)) for lengths in shard_lengths]
    fewest_rows = min(len(lengths) for lengths in shard_lengths)
    orders = [torch.argsort(lengths, descending=True, stable=True) for lengths in shard_lengths]
    # A shard with more rows than count x max_rows (the smallest shard capped count) takes larger parts.
    tables = [_PaddingTable(lengths[order].numpy(), max(max_rows, math.ceil(len(lengths) / count)))
              for lengths, order in zip(shard_lengths, orders)]
    n = count
    while n < fewest_rows:
        now = sum(t.cost(n) for t in tables)
        if now - sum(t.cost(n + 1) for t in tables) < MIN_SAVING * now:
            break
        n += 1
    return [[order[a:b] for a, b in table.bounds(n)] for order, table in zip(orders, tables)]


class _PaddingTable:
    """Fewest computed tokens for cutting rows sorted longest first into k consecutive parts (a part
    [a, b) computes (b - a) x length[a]), by dynamic programming over k, kept for every k asked."""

    def __init__(self, sorted_lengths: np.ndarray, max_rows: int):
        self.lengths, self.max_rows = sorted_lengths.astype(np.int64), max_rows
        m = len(sorted_lengths)
        first = np.full(m + 1, np.inf)
        ends = np.arange(1, m + 1)
        first[1:] = np.where(ends <= max_rows, ends * self.lengths[0], np.inf)  # one part: rows [0, j)
        self.best = [None, first]  # best[k][j]: rows [0, j) in k parts
        self.cut = [None, np.zeros(m + 1, dtype=np.int64)]  # cut[k][j]: where the last of those parts starts

    def cost(self, k: int) -> float:
        while len(self.best) <= k:
            self._extend()
        return float(self.best[k][-1])

    def _extend(self) -> None:
        previous, m = self.best[-1], len(self.lengths)
        best, cut = np.full(m + 1, np.inf), np.zeros(m + 1, dtype=np.int64)
        starts = np.arange(m)
        for j in range(1, m + 1):
            a = starts[max(0, j - self.max_rows):j]  # the last part is rows [a, j)
            total = previous[a] + (j - a) * self.lengths[a]
            i = int(np.argmin(total))
            best[j], cut[j] = total[i], a[i]
        self.best.append(best)
        self.cut.append(cut)

    def bounds(self, k: int) -> list[tuple[int, int]]:
        self.cost(k)
        out, j = [], len(self.lengths)
        for parts in range(k, 0, -1):
            a = int(self.cut[parts][j]) if parts > 1 else 0
            out.append((a, j))
            j = a
        return out[::-1]

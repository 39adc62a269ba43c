"""The built-in sampler as a rollout worker (the body of a Ray actor).

The controller makes the actor: `ray.remote(num_cpus=...)(BuiltinSamplerWorker)`.
It loads a checkpoint directory, our hybrid model (transformers' MiniMax format) or a
dense Qwen2 / Llama one (`cispo.model.dense`), and forwards the `RolloutEngine` calls to
`cispo.model.Sampler`.
"""

from __future__ import annotations

from typing import Iterable

import torch

from cispo.model import Sampler, from_pretrained
from cispo.model.dense import DenseLM
from cispo.policy import is_hybrid
from cispo.types import Completion, SamplingParams


class BuiltinSamplerWorker:
    def __init__(self, checkpoint_dir: str, seed: int, max_batch: int = 256, num_threads: int | None = None):
        """`max_batch`: sequences decoded together (vLLM's max_num_seqs default, 256): a step's
        prompts x samples then run as one batch, since each decode step's cost is mostly fixed
        (reading the weights, per-op dispatch), not per sequence.
        `num_threads`: torch intra-op threads; set it to the actor's CPU share so actors do not oversubscribe."""
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        model = from_pretrained(checkpoint_dir) if is_hybrid(checkpoint_dir) else DenseLM.from_pretrained(checkpoint_dir)
        if torch.cuda.is_available():  # Ray made the actor's GPU (num_gpus_per_worker) the visible one
            model = model.cuda()
        self.sampler = Sampler(model, max_batch=max_batch, seed=seed)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return self.sampler.generate(prompts, params)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.sampler.update_weights(named_tensors, version)

    def policy_version(self) -> int:
        return self.sampler.policy_version()

